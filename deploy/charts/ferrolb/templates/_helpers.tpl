{{/*
The prefix of every object's name: fullnameOverride, else the release name when it already
says ferrolb (release "ferrolb" gives the names of deploy/: ferrolb-controller, ...), else
"<release>-ferrolb". 44 characters leave room for the longest suffix ("-controller-metrics")
in a Service name (63 at most).
*/}}
{{- define "ferrolb.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 44 | trimSuffix "-" -}}
{{- else if contains "ferrolb" .Release.Name -}}
{{- .Release.Name | trunc 44 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-ferrolb" .Release.Name | trunc 44 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ferrolb.controller.name" -}}{{ include "ferrolb.fullname" . }}-controller{{- end -}}
{{- define "ferrolb.speaker.name" -}}{{ include "ferrolb.fullname" . }}-speaker{{- end -}}

{{/*
Labels of every object: ferrolb's own (as in deploy/) and Helm's (which the comparison with
deploy/ ignores: helm.sh/chart, app.kubernetes.io/managed-by, .../instance, .../version).
*/}}
{{- define "ferrolb.labels" -}}
app.kubernetes.io/part-of: ferrolb
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Selector of the controller's pods; unique per release through the fullname. */}}
{{- define "ferrolb.controller.selector" -}}
app.kubernetes.io/name: {{ include "ferrolb.controller.name" . }}
{{- end -}}

{{- define "ferrolb.speaker.selector" -}}
app.kubernetes.io/name: {{ include "ferrolb.speaker.name" . }}
{{- end -}}

{{/* image: registry/repository:tag, or @digest. Call with (dict "root" $ "image" .Values.x.image). */}}
{{- define "ferrolb.image" -}}
{{- $repo := .image.repository -}}
{{- with .root.Values.image.registry -}}
{{- $repo = printf "%s/%s" (trimSuffix "/" .) $repo -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repo .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (.image.tag | default .root.Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/* The port of an --admin-address value ("[::]:7472", "0.0.0.0:9000"), else the default. */}}
{{- define "ferrolb.adminPort" -}}
{{- if .address -}}
{{- splitList ":" .address | last -}}
{{- else -}}
{{- .default -}}
{{- end -}}
{{- end -}}

{{/*
The host of the speaker's probes: the loopback address while the admin server listens on
every address (the default), else the one address speaker.adminAddress names.
*/}}
{{- define "ferrolb.speakerProbeHost" -}}
{{- $host := regexReplaceAll ":[0-9]+$" (.Values.speaker.adminAddress | default "") "" | trimPrefix "[" | trimSuffix "]" -}}
{{- if or (eq $host "") (eq $host "::") (eq $host "0.0.0.0") -}}
host: 127.0.0.1
{{- else -}}
host: {{ $host | quote }}
{{- end -}}
{{- end -}}

{{/*
The gossip Secret the speakers read: a Secret the user manages, or <fullname>-gossip (made by
the chart from gossip.key, or by the controller).
*/}}
{{- define "ferrolb.gossip.secretName" -}}
{{- if and .Values.gossip.existingSecret .Values.gossip.key -}}
{{- fail "gossip.existingSecret and gossip.key are both set: give the name of your Secret, or a key for the chart's, not both" -}}
{{- end -}}
{{- .Values.gossip.existingSecret | default (printf "%s-gossip" (include "ferrolb.fullname" .)) -}}
{{- end -}}

{{/* "true" when the controller creates the gossip Secret (neither a Secret nor a key given). */}}
{{- define "ferrolb.gossip.controllerCreates" -}}
{{- if not (or .Values.gossip.existingSecret .Values.gossip.key) -}}true{{- end -}}
{{- end -}}
