{{/*
Helpers. Every helper takes a chart context: the top-level context ($) of this chart, or
the context of idgate as a subchart of another chart (.Subcharts.idgate), which has the
same .Values/.Chart/.Release. See _sidecar.tpl for how the embedding case finds it.
*/}}

{{/* Chart name, truncated to 63 characters. */}}
{{- define "idgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<name>, unless the release name already contains it. */}}
{{- define "idgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Chart name and version, for the helm.sh/chart label. */}}
{{- define "idgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Common labels. */}}
{{- define "idgate.labels" -}}
helm.sh/chart: {{ include "idgate.chart" . }}
{{ include "idgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: {{ .Values.mode }}
{{- end }}

{{/* Selector labels. */}}
{{- define "idgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "idgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* ServiceAccount name. */}}
{{- define "idgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "idgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The idgate image reference; the tag defaults to the chart's appVersion. */}}
{{- define "idgate.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}
{{- end }}

{{/* Name of the generated ConfigMap holding idgate.toml. */}}
{{- define "idgate.configMapName" -}}
{{- printf "%s-config" (include "idgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the Secret mounted at /etc/idgate/secrets: existingSecret or the generated one. */}}
{{- define "idgate.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else }}
{{- include "idgate.fullname" . }}
{{- end }}
{{- end }}

{{/* Where the config file, the public files next to it (idgate.publicFiles) and the
secret files are mounted in the idgate container. Without reload, idgate.toml and each
public file are mounted one by one (subPath) into /etc/idgate; with reload, the whole
ConfigMap is mounted as the directory /etc/idgate/config, since only a directory mount
sees the ConfigMap's updates (a subPath mount keeps the file it started with). */}}
{{- define "idgate.configDir" -}}
{{- if .Values.reload }}/etc/idgate/config{{ else }}/etc/idgate{{ end }}
{{- end }}
{{- define "idgate.configPath" -}}{{ include "idgate.configDir" . }}/idgate.toml{{- end }}
{{- define "idgate.secretsDir" -}}/etc/idgate/secrets{{- end }}

{{/* The store URL as given in values (a reference with redis.urlSecretKey); the config
gets it through the secret plan when it holds credentials. */}}
{{- define "idgate.storeUrl" -}}
{{- if .Values.redis.urlSecretKey }}
{{- printf "file:%s/%s" (include "idgate.secretsDir" .) .Values.redis.urlSecretKey }}
{{- else }}
{{- .Values.redis.url | default "memory://" }}
{{- end }}
{{- end }}

{{/* "true" when the store is the in-memory one. */}}
{{- define "idgate.isMemoryStore" -}}
{{- if eq (include "idgate.storeUrl" .) "memory://" }}true{{- end }}
{{- end }}

{{/* idgate's upstream: the app on loopback (sidecar, embedded) or gateway.upstream. */}}
{{- define "idgate.upstream" -}}
{{- if eq .Values.mode "gateway" }}
{{- .Values.gateway.upstream }}
{{- else }}
{{- printf "http://127.0.0.1:%d" (int .Values.app.port) }}
{{- end }}
{{- end }}

{{/*
Seconds in a duration written as "<n>s", "<n>m" or "<n>h" (idgate's humantime syntax also
allows compound forms; those print nothing and are not checked against the grace period).
*/}}
{{- define "idgate.durationSeconds" -}}
{{- $d := toString . | trim }}
{{- if regexMatch "^[0-9]+s$" $d }}
{{- trimSuffix "s" $d | int }}
{{- else if regexMatch "^[0-9]+m$" $d }}
{{- mul (trimSuffix "m" $d | int) 60 }}
{{- else if regexMatch "^[0-9]+h$" $d }}
{{- mul (trimSuffix "h" $d | int) 3600 }}
{{- end }}
{{- end }}

{{/*
Render-time guards. Prints nothing; fails the render with a message naming the value to
change.
*/}}
{{- define "idgate.validate" -}}
{{- $v := .Values }}
{{- if not (has $v.mode (list "sidecar" "gateway" "embedded")) }}
{{- fail (printf "mode must be sidecar, gateway or embedded, not %q" (toString $v.mode)) }}
{{- end }}
{{- if and (eq $v.mode "sidecar") (not $v.app.image.repository) }}
{{- fail "mode: sidecar needs app.image.repository (the app idgate protects)" }}
{{- end }}
{{- if and (eq $v.mode "gateway") (not $v.gateway.upstream) }}
{{- fail "mode: gateway needs gateway.upstream, the app's URL (http://host:port)" }}
{{- end }}
{{- if include "idgate.isMemoryStore" . }}
{{- if gt (int $v.replicaCount) 1 }}
{{- fail (printf "replicaCount is %d but the store is memory:// (per process): set redis.url to a shared Redis, or replicaCount: 1" (int $v.replicaCount)) }}
{{- end }}
{{- if $v.autoscaling.enabled }}
{{- fail "autoscaling.enabled scales to several replicas but the store is memory:// (per process): set redis.url to a shared Redis" }}
{{- end }}
{{- else }}
{{- if not (or $v.identity.signingKey (and $v.existingSecret $v.identity.signingKeySecretKey)) }}
{{- fail "redis.url is set, so every replica must sign with the same key: set identity.signingKey (a PEM from `idgate keygen`) or existingSecret with a signing.pem key" }}
{{- end }}
{{- end }}
{{- if eq (int $v.ports.http) (int $v.ports.admin) }}
{{- fail (printf "ports.http and ports.admin are both %d: idgate's public and admin listeners need two ports" (int $v.ports.http)) }}
{{- end }}
{{- if ne $v.mode "gateway" }}
{{- $appPort := int $v.app.port }}
{{- if or (eq $appPort (int $v.ports.http)) (eq $appPort (int $v.ports.admin)) }}
{{- fail (printf "app.port (%d) is also one of idgate's ports (ports.http %d, ports.admin %d): in mode %s the app and idgate share the pod's network, so one of them could not bind; change app.port or ports.*" $appPort (int $v.ports.http) (int $v.ports.admin) $v.mode) }}
{{- end }}
{{- if and $v.sidecar.native (semverCompare "<1.29-0" .Capabilities.KubeVersion.Version) }}
{{- fail (printf "sidecar.native needs Kubernetes 1.29 or later (native sidecars: initContainers with restartPolicy: Always), but the cluster is %s: set sidecar.native=false" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}
{{- /* A misspelt key of a rule or an issuer would be left out of idgate.toml without a
word: for a rule that widens access (allowGroup admits every signed-in user), so the
render stops instead. */}}
{{- $ruleKeys := list "name" "path" "pathRegex" "methods" "tenants" "public" "api" "allowGroups" "allowRoles" "allowUsers" }}
{{- range $i, $r := ($v.access | default dict).rules | default list }}
{{- if not (kindIs "map" $r) }}
{{- fail (printf "access.rules[%d] must be a mapping with the keys %s" $i (join ", " $ruleKeys)) }}
{{- end }}
{{- range $k, $_ := $r }}
{{- if not (has $k $ruleKeys) }}
{{- fail (printf "access.rules[%d].%s is not a rule key: use %s" $i $k (join ", " $ruleKeys)) }}
{{- end }}
{{- end }}
{{- end }}
{{- $bearerKeys := list "issuer" "audience" "jwksUrl" "jwks" "caCertificate" "algorithms" "userClaim" "groupClaim" "emailClaim" "roleClaim" "nameClaim" "forwardAuthorization" }}
{{- range $i, $t := $v.tenants | default list }}
{{- range $j, $b := ($t | default dict).bearer | default list }}
{{- if not (kindIs "map" $b) }}
{{- fail (printf "tenants[%d].bearer[%d] must be a mapping with the keys %s" $i $j (join ", " $bearerKeys)) }}
{{- end }}
{{- range $k, $_ := $b }}
{{- if not (has $k $bearerKeys) }}
{{- fail (printf "tenants[%d].bearer[%d].%s is not an issuer key: use %s" $i $j $k (join ", " $bearerKeys)) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- $preStop := int (($v.preStop | default dict).sleepSeconds | default 0) }}
{{- if lt $preStop 0 }}
{{- fail (printf "preStop.sleepSeconds must be 0 (no preStop hook) or more, not %d" $preStop) }}
{{- end }}
{{- $grace := include "idgate.durationSeconds" $v.server.shutdownGrace }}
{{- $needed := add $preStop (int ($grace | default 0)) }}
{{- if le (int $v.terminationGracePeriodSeconds) $needed }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed preStop.sleepSeconds (%d) + server.shutdownGrace (%s) = %ds, or in-flight requests are killed before idgate has drained them" (int $v.terminationGracePeriodSeconds) $preStop (toString $v.server.shutdownGrace) $needed) }}
{{- end }}
{{- end }}
