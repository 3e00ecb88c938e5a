"""HTTP route handlers of the edge."""
