{{/*
Names and labels. Every object name comes from "switchboard.fullname" or
"switchboard.componentName", so nameOverride/fullnameOverride rename everything at once.
*/}}

{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: (dict "root" $ "name" "edge") */}}
{{- define "switchboard.componentName" -}}
{{- printf "%s-%s" (include "switchboard.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "switchboard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every object; takes the root context. */}}
{{- define "switchboard.labels" -}}
helm.sh/chart: {{ include "switchboard.chart" . }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchboard
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "name" "edge") */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{- define "switchboard.componentLabels" -}}
{{ include "switchboard.labels" .root }}
app.kubernetes.io/component: {{ .name }}
{{- end -}}

{{/*
Deep merge of a component over the `default:` block, written out because sprig's
merge/mergeOverwrite treat false, 0 and "" as "unset" (a component could not turn off
something the default turns on). Maps merge key by key; anything else replaces.
Mutates the first argument: (list $dst $src).
*/}}
{{- define "switchboard.deepMerge" -}}
{{- $dst := index . 0 -}}
{{- $src := index . 1 -}}
{{- range $key, $value := $src -}}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) -}}
{{- $_ := include "switchboard.deepMerge" (list (get $dst $key) $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* One component's effective values as JSON: (dict "root" $ "name" "edge") */}}
{{- define "switchboard.component" -}}
{{- $merged := deepCopy .root.Values.default -}}
{{- $_ := include "switchboard.deepMerge" (list $merged (deepCopy (get .root.Values.components .name))) -}}
{{- toJson $merged -}}
{{- end -}}

{{/* Names of the enabled components, sorted, as a JSON list. */}}
{{- define "switchboard.enabledComponents" -}}
{{- $names := list -}}
{{- range $name, $component := .Values.components -}}
{{- if $component.enabled -}}
{{- $names = append $names $name -}}
{{- end -}}
{{- end -}}
{{- toJson (sortAlpha $names) -}}
{{- end -}}

{{- define "switchboard.serviceAccountName" -}}
{{- if .c.serviceAccount.create -}}
{{- default (include "switchboard.componentName" .) .c.serviceAccount.name -}}
{{- else -}}
{{- default "default" .c.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "switchboard.image" -}}
{{- $image := .c.image -}}
{{- $ref := printf "%s/%s" $image.registry $image.repository | trimPrefix "/" -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $ref $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $ref (default .root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Fullname of a subchart, following the subchart's own helper. (dict "root" $ "chart" "nats") */}}
{{- define "switchboard.subchartFullname" -}}
{{- $values := get .root.Values .chart -}}
{{- if $values.fullnameOverride -}}
{{- $values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .chart $values.nameOverride -}}
{{- if contains $name .root.Release.Name -}}
{{- .root.Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .root.Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The NATS URL services connect to (without credentials). */}}
{{- define "switchboard.natsUrl" -}}
{{- if .Values.connections.nats.url -}}
{{- .Values.connections.nats.url -}}
{{- else if .Values.nats.enabled -}}
{{- printf "%s://%s.%s.svc:4222" (ternary "tls" "nats" .Values.connections.nats.tls) (include "switchboard.subchartFullname" (dict "root" . "chart" "nats")) .Release.Namespace -}}
{{- else -}}
{{- fail "connections.nats.url is required when nats.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/* The NATS monitoring endpoint (host:port) KEDA reads consumer lag from. */}}
{{- define "switchboard.natsMonitoringEndpoint" -}}
{{- if .Values.keda.natsMonitoringEndpoint -}}
{{- .Values.keda.natsMonitoringEndpoint -}}
{{- else if .Values.nats.enabled -}}
{{- printf "%s-headless.%s.svc:8222" (include "switchboard.subchartFullname" (dict "root" . "chart" "nats")) .Release.Namespace -}}
{{- else -}}
{{- fail "keda.natsMonitoringEndpoint is required when nats.enabled is false" -}}
{{- end -}}
{{- end -}}

{{/* A secretKeyRef env var: (dict "env" NAME "secret" SECRET "key" KEY "optional" BOOL) */}}
{{- define "switchboard.secretEnv" -}}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret | quote }}
      key: {{ .key | quote }}
      {{- if .optional }}
      optional: true
      {{- end }}
{{- end -}}

{{/* Pod selector of a subchart's pods, for NetworkPolicy egress. */}}
{{- define "switchboard.subchartPeer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ .chart }}
      app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}
