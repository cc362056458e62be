{{/*
Named templates for putting idgate into a pod spec: this chart's own Deployment uses them,
and so can another chart that has idgate as a dependency (with `mode: embedded`, which
renders only the ConfigMap and the Secret). docs/kubernetes.md shows the whole snippet.

All three take one dict:
  root       the including chart's top-level context ($). Required.
  subchart   name (or alias) of the idgate dependency; default "idgate". When root has no
             such subchart, root itself is taken as the idgate chart.
  overrides  optional dict deep-merged over the idgate values for the container only:
             image, resources, securityContext, extraEnv, extraVolumeMounts, probes,
             logLevel, logFormat, sidecar.native, ports, preStop. (Config keys are
             rendered into the ConfigMap by the subchart, so set those in the subchart's
             values.)

  idgate.sidecarContainer   one container list item ("- name: idgate ..."); with
                            sidecar.native it carries restartPolicy: Always and a
                            startupProbe and belongs under initContainers, else under
                            containers.
  idgate.sidecarVolumes     the pod volumes it mounts (list items).
  idgate.podAnnotations     checksum/config and checksum/secret, to roll pods on change
                            (with reload: checksum/secret only; idgate reloads the
                            config itself).
*/}}

{{/* Resolves the idgate chart context of an args dict (root, subchart, overrides) into args.ctx. */}}
{{- define "idgate.resolveContext" -}}
{{- $root := required "idgate templates need (dict \"root\" $ ...)" .root }}
{{- $name := .subchart | default "idgate" }}
{{- $ctx := $root }}
{{- if and $root.Subcharts (hasKey $root.Subcharts $name) }}
{{- $ctx = index $root.Subcharts $name }}
{{- end }}
{{- $values := $ctx.Values }}
{{- if .overrides }}
{{- $values = mergeOverwrite (deepCopy $ctx.Values) .overrides }}
{{- end }}
{{- $_ := set . "ctx" (dict "Values" $values "Chart" $ctx.Chart "Release" $ctx.Release "Capabilities" $ctx.Capabilities) }}
{{- end }}

{{- define "idgate.sidecarContainer" -}}
{{- $args := dict "root" .root "subchart" .subchart "overrides" .overrides }}
{{- include "idgate.resolveContext" $args }}
{{- $c := $args.ctx }}
{{- $v := $c.Values }}
{{- include "idgate.validate" $c -}}
- name: idgate
  image: {{ include "idgate.image" $c | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if $v.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  command:
    - idgate
    - --log-format
    - {{ $v.logFormat | default "json" | quote }}
    - serve
    - --config
    - {{ include "idgate.configPath" $c }}
  env:
    - name: IDGATE_LOG
      value: {{ $v.logLevel | default "info" | quote }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: http
      containerPort: {{ int $v.ports.http }}
      protocol: TCP
    - name: admin
      containerPort: {{ int $v.ports.admin }}
      protocol: TCP
  {{- if $v.sidecar.native }}
  startupProbe:
    httpGet:
      path: {{ $v.probes.startup.path }}
      port: admin
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  {{- end }}
  livenessProbe:
    httpGet:
      path: {{ $v.probes.liveness.path }}
      port: admin
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.liveness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  readinessProbe:
    httpGet:
      path: {{ $v.probes.readiness.path }}
      port: admin
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    timeoutSeconds: {{ $v.probes.readiness.timeoutSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  {{- with ($v.preStop | default dict).sleepSeconds }}
  lifecycle:
    # Endpoints and ingresses take a moment to drop a terminating pod: keep accepting
    # until they have, then SIGTERM starts idgate's drain (server.shutdownGrace).
    preStop:
      exec:
        command: ["sleep", {{ int . | toString | quote }}]
  {{- end }}
  {{- with $v.resources }}
  resources:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.securityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  volumeMounts:
    {{- if $v.reload }}
    # The whole ConfigMap as a directory: kubelet swaps in its updates, watch_config
    # reloads them (a subPath mount would never see one).
    - name: idgate-config
      mountPath: {{ include "idgate.configDir" $c }}
      readOnly: true
    {{- else }}
    - name: idgate-config
      mountPath: {{ include "idgate.configPath" $c }}
      subPath: idgate.toml
      readOnly: true
    {{- range $key, $_ := include "idgate.publicFiles" $c | fromYaml }}
    - name: idgate-config
      mountPath: {{ printf "%s/%s" (include "idgate.configDir" $c) $key }}
      subPath: {{ $key }}
      readOnly: true
    {{- end }}
    {{- end }}
    {{- if include "idgate.hasSecret" $c }}
    - name: idgate-secrets
      mountPath: {{ include "idgate.secretsDir" $c }}
      readOnly: true
    {{- end }}
    - name: idgate-tmp
      mountPath: /tmp
    {{- with $v.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end }}

{{- define "idgate.sidecarVolumes" -}}
{{- $args := dict "root" .root "subchart" .subchart "overrides" .overrides }}
{{- include "idgate.resolveContext" $args }}
{{- $c := $args.ctx -}}
- name: idgate-config
  configMap:
    name: {{ include "idgate.configMapName" $c }}
    defaultMode: 0440
{{- if include "idgate.hasSecret" $c }}
- name: idgate-secrets
  secret:
    secretName: {{ include "idgate.secretName" $c }}
    defaultMode: 0440
{{- end }}
- name: idgate-tmp
  emptyDir:
    sizeLimit: 64Mi
{{- end }}

{{- define "idgate.podAnnotations" -}}
{{- $args := dict "root" .root "subchart" .subchart "overrides" .overrides }}
{{- include "idgate.resolveContext" $args }}
{{- include "idgate.checksumAnnotations" $args.ctx }}
{{- end }}
