{{/*
idgate.toml, rendered from values. Every value is written with toJson, whose output
(as Go produces it) is also a valid TOML string, number, boolean or array. Keys left
unset (null or "") are omitted, so idgate's own defaults apply.
*/}}

{{/* One `key = value` line, or nothing when the value is unset. Args: k, v. */}}
{{- define "idgate.toml.kv" -}}
{{- if not (or (kindIs "invalid" .v) (and (kindIs "string" .v) (eq .v ""))) }}
{{ .k }} = {{ .v | toJson }}
{{- end }}
{{- end }}

{{/* Lines for a camelCase values map through a list of "camelKey=snake_key" pairs. Args: m, keys. */}}
{{- define "idgate.toml.map" -}}
{{- $m := .m | default dict }}
{{- range .keys }}
{{- $pair := splitList "=" . }}
{{- include "idgate.toml.kv" (dict "k" (last $pair) "v" (index $m (first $pair))) }}
{{- end }}
{{- end }}

{{/*
One secret of the config. Decides where it comes from and records it in the plan:
  plan.refs[slot]  = the config value ("file:/etc/idgate/secrets/<key>", or the value
                     itself when it already is a "file:"/"env:" reference);
  plan.files[key]  = the value, base64-encoded (as Secret data, and so that no YAML
                     round trip can change it), for the generated Secret.
Args: ctx, plan, slot, key (the Secret key), value, what (values path, for messages),
required (bool).
*/}}
{{- define "idgate.secretSlot" -}}
{{- $value := .value | default "" | toString }}
{{- $existing := .ctx.Values.existingSecret }}
{{- $ref := printf "file:%s/%s" (include "idgate.secretsDir" .ctx) .key }}
{{- if or (hasPrefix "file:" $value) (hasPrefix "env:" $value) }}
{{- $_ := set .plan.refs .slot $value }}
{{- else if $value }}
{{- if $existing }}
{{- fail (printf "%s is set in values but existingSecret (%s) is used: store it in that Secret under the key %q and leave %s empty" .what $existing .key .what) }}
{{- end }}
{{- $_ := set .plan.files .key ($value | b64enc) }}
{{- $_ := set .plan.refs .slot $ref }}
{{- else if and $existing .key }}
{{- $_ := set .plan.refs .slot $ref }}
{{- $_ := set .plan.expected .key .what }}
{{- else if .required }}
{{- fail (printf "%s is required: set it, or set existingSecret to a Secret with the key %q" .what .key) }}
{{- end }}
{{- end }}

{{/*
Fills a plan (dict with empty dicts files, refs, expected) with every secret of the
config. Args: ctx, plan.
*/}}
{{- define "idgate.secretPlan" -}}
{{- $ctx := .ctx }}
{{- $v := $ctx.Values }}
{{- $plan := .plan }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "signing" "key" ($v.identity.signingKeySecretKey | default "") "value" $v.identity.signingKey "what" "identity.signingKey" "required" false) }}
{{- $caKey := $v.store.caCertificateSecretKey | default "" }}
{{- if and $v.store.caCertificate (not $caKey) }}
{{- $caKey = "redis-ca.pem" }}
{{- end }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "storeCa" "key" $caKey "value" $v.store.caCertificate "what" "store.caCertificate" "required" false) }}
{{- $redisUrl := $v.redis.url | default "" | toString }}
{{- if $v.redis.urlSecretKey }}
{{- if not $v.existingSecret }}
{{- fail "redis.urlSecretKey names a key of existingSecret, which is not set" }}
{{- end }}
{{- if $redisUrl }}
{{- fail "set redis.url or redis.urlSecretKey, not both" }}
{{- end }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "store" "key" $v.redis.urlSecretKey "value" "" "what" "redis.urlSecretKey" "required" true) }}
{{- else if and (contains "@" $redisUrl) $v.existingSecret (not (or (hasPrefix "file:" $redisUrl) (hasPrefix "env:" $redisUrl))) }}
{{- fail (printf "redis.url holds credentials but existingSecret (%s) is used: put the URL in that Secret and set redis.urlSecretKey to its key" $v.existingSecret) }}
{{- else if contains "@" $redisUrl }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "store" "key" "redis-url" "value" $redisUrl "what" "redis.url" "required" false) }}
{{- end }}
{{- range $i, $k := $v.identity.previousKeys | default list }}
{{- $slot := printf "previous-%d" $i }}
{{- if and $v.existingSecret (not (or (hasPrefix "file:" $k) (hasPrefix "env:" $k))) }}
{{- fail (printf "identity.previousKeys[%d] must be a reference (\"file:/etc/idgate/secrets/<key>\") when existingSecret is used" $i) }}
{{- end }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" $slot "key" (printf "%s.pem" $slot) "value" $k "what" (printf "identity.previousKeys[%d]" $i) "required" true) }}
{{- end }}
{{- if ($v.adminApi | default dict).enabled }}
{{- $adminToken := $v.adminApi.token | default "" | toString }}
{{- if hasPrefix "sha256:" $adminToken }}
{{- $_ := set $plan.refs "admin" $adminToken }}
{{- else }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "admin" "key" "admin-token" "value" $adminToken "what" "adminApi.token" "required" true) }}
{{- end }}
{{- end }}
{{- range $i, $t := $v.tenants | default list }}
{{- if not $t.id }}
{{- fail (printf "tenants[%d].id is required" $i) }}
{{- end }}
{{- if hasKey $t "scim" }}
{{- $token := ($t.scim | default dict).token | default "" | toString }}
{{- if hasPrefix "sha256:" $token }}
{{- $_ := set $plan.refs (printf "scim-%d" $i) $token }}
{{- else }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" (printf "scim-%d" $i) "key" (printf "scim-%s.token" $t.id) "value" $token "what" (printf "tenants[%d].scim.token" $i) "required" true) }}
{{- end }}
{{- range $j, $prev := (($t.scim | default dict).previousTokens | default list) }}
{{- if not (or (hasPrefix "sha256:" $prev) (hasPrefix "env:" $prev) (hasPrefix "file:" $prev)) }}
{{- fail (printf "tenants[%d].scim.previousTokens[%d] must be a sha256: hash from `idgate token` (or an env:/file: reference): previous tokens go into the ConfigMap" $i $j) }}
{{- end }}
{{- end }}
{{- end }}
{{- $saml := $t.saml | default dict }}
{{- if hasKey $saml "spKey" }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" (printf "sp-%d" $i) "key" (printf "sp-%s.key" $t.id) "value" $saml.spKey "what" (printf "tenants[%d].saml.spKey" $i) "required" true) }}
{{- end }}
{{- range $j, $k := $saml.spPreviousKeys | default list }}
{{- if and $v.existingSecret (not (or (hasPrefix "file:" $k) (hasPrefix "env:" $k))) }}
{{- fail (printf "tenants[%d].saml.spPreviousKeys[%d] must be a reference (\"file:/etc/idgate/secrets/<key>\") when existingSecret is used" $i $j) }}
{{- end }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" (printf "sp-%d-previous-%d" $i $j) "key" (printf "sp-%s.previous-%d.key" $t.id $j) "value" $k "what" (printf "tenants[%d].saml.spPreviousKeys[%d]" $i $j) "required" true) }}
{{- end }}
{{- if $t.maestrano }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" (printf "mno-%d" $i) "key" (printf "mno-%s.api-key" $t.id) "value" $t.maestrano.apiKey "what" (printf "tenants[%d].maestrano.apiKey" $i) "required" true) }}
{{- end }}
{{- end }}
{{- if $v.maestranoDevpl.enabled }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "devpl-key" "key" "devpl-env-key" "value" $v.maestranoDevpl.envKey "what" "maestranoDevpl.envKey" "required" true) }}
{{- include "idgate.secretSlot" (dict "ctx" $ctx "plan" $plan "slot" "devpl-secret" "key" "devpl-env-secret" "value" $v.maestranoDevpl.envSecret "what" "maestranoDevpl.envSecret" "required" true) }}
{{- end }}
{{- end }}

{{/* A new, filled plan as YAML (for fromYaml). */}}
{{- define "idgate.secretPlanYaml" -}}
{{- $plan := dict "files" (dict) "refs" (dict) "expected" (dict) }}
{{- include "idgate.secretPlan" (dict "ctx" . "plan" $plan) }}
{{- toYaml $plan }}
{{- end }}

{{/*
The public files shipped in the ConfigMap next to idgate.toml, and the config values that
refer to them, as YAML (for fromYaml): the JWKS documents and CA certificates of
[[tenants.bearer]]. They are public material, so the ConfigMap, not the Secret, holds them;
a file keeps a JWKS document out of the TOML and is what the SPEC's example refers to.
  files[key] = the text, base64-encoded (so that no YAML round trip can change it);
  refs[slot] = "file:/etc/idgate/<key>", or the value itself when it already is a
               "file:"/"env:" reference (nothing is shipped then).
Slots: bearer-<tenant index>-<issuer index>-jwks and -ca. A JWKS given as a YAML mapping
is written as JSON.
*/}}
{{- define "idgate.publicPlanYaml" -}}
{{- $plan := dict "files" (dict) "refs" (dict) }}
{{- $dir := include "idgate.configDir" . }}
{{- range $i, $t := .Values.tenants | default list }}
{{- range $j, $b := $t.bearer | default list }}
{{- $jwks := $b.jwks }}
{{- if kindIs "map" $jwks }}
{{- $jwks = toPrettyJson $jwks }}
{{- end }}
{{- range $item := list (list "jwks" $jwks "jwks.json") (list "ca" $b.caCertificate "ca.pem") }}
{{- $value := index $item 1 | default "" | toString }}
{{- $slot := printf "bearer-%d-%d-%s" $i $j (index $item 0) }}
{{- if or (hasPrefix "file:" $value) (hasPrefix "env:" $value) }}
{{- $_ := set $plan.refs $slot $value }}
{{- else if $value }}
{{- $key := printf "bearer-%s-%d.%s" $t.id $j (index $item 2) }}
{{- $_ := set $plan.files $key ($value | b64enc) }}
{{- $_ := set $plan.refs $slot (printf "file:%s/%s" $dir $key) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $plan }}
{{- end }}

{{/* The public files of the ConfigMap besides idgate.toml (key: text), as YAML; empty when none. */}}
{{- define "idgate.publicFiles" -}}
{{- $plan := include "idgate.publicPlanYaml" . | fromYaml }}
{{- $files := dict }}
{{- range $key, $b64 := $plan.files | default dict }}
{{- $_ := set $files $key (b64dec $b64) }}
{{- end }}
{{- if $files }}
{{- toYaml $files }}
{{- end }}
{{- end }}

{{/* The generated Secret's data (key: base64 value), as YAML; empty with existingSecret. */}}
{{- define "idgate.secretFiles" -}}
{{- $plan := include "idgate.secretPlanYaml" . | fromYaml }}
{{- if $plan.files }}
{{- toYaml $plan.files }}
{{- end }}
{{- end }}

{{/* The generated Secret's data, base64-encoded, as compact JSON with sorted keys ({} when none). */}}
{{- define "idgate.secretDataJson" -}}
{{- include "idgate.secretFiles" . | fromYaml | toJson }}
{{- end }}

{{/* "true" when the pod mounts a Secret (generated or existing). */}}
{{- define "idgate.hasSecret" -}}
{{- if or .Values.existingSecret (include "idgate.secretFiles" .) }}true{{- end }}
{{- end }}

{{/* The content of idgate.toml. */}}
{{- define "idgate.config" -}}
{{- include "idgate.validate" . }}
{{- $v := .Values }}
{{- $plan := include "idgate.secretPlanYaml" . | fromYaml }}
{{- $refs := $plan.refs | default dict }}
{{- $public := include "idgate.publicPlanYaml" . | fromYaml }}
{{- $publicRefs := $public.refs | default dict -}}
# idgate.toml rendered by the idgate Helm chart {{ .Chart.Version }} (release {{ .Release.Name }}).
# Change the chart values, not this file.
{{- if include "idgate.hasSecret" . }}
# Secrets are "file:" references to the keys of the Secret {{ include "idgate.secretName" . | quote }},
# mounted at {{ include "idgate.secretsDir" . }}.
{{- end }}
{{- with $public.files }}
# Public files of this ConfigMap, mounted next to this file in {{ include "idgate.configDir" $ }}
{{- if $v.reload }}
# (their SHA-256 is listed so that a change to one changes this file, and so
# watch_config reloads both):
{{- else }}
# (their SHA-256 is listed so that checksum/config rolls the pods when one changes):
{{- end }}
{{- range $key, $b64 := . }}
#   {{ $key }} sha256:{{ b64dec $b64 | sha256sum }}
{{- end }}
{{- end }}

[server]
listen = {{ printf "0.0.0.0:%d" (int $v.ports.http) | toJson }}
admin_listen = {{ printf "0.0.0.0:%d" (int $v.ports.admin) | toJson }}
upstream = {{ include "idgate.upstream" . | toJson }}
{{- include "idgate.toml.kv" (dict "k" "public_url" "v" $v.publicUrl) }}
{{- include "idgate.toml.map" (dict "m" $v.server "keys" (list "connectTimeout=connect_timeout" "upstreamTimeout=upstream_timeout" "shutdownGrace=shutdown_grace" "trustedProxies=trusted_proxies" "workers=workers")) }}
{{- include "idgate.toml.kv" (dict "k" "admin_token" "v" (index $refs "admin")) }}
{{- if $v.reload }}
# reload: the chart mounts this ConfigMap as a directory; idgate re-reads this file when
# its content changes (looked at every 5 s).
watch_config = true
{{- end }}

[store]
url = {{ index $refs "store" | default (include "idgate.storeUrl" .) | toJson }}
{{- with index $refs "storeCa" }}
ca_certificate = {{ . | toJson }}
{{- end }}
{{- include "idgate.toml.map" (dict "m" $v.store "keys" (list "keyPrefix=key_prefix" "failMode=fail_mode")) }}

[session]
{{- include "idgate.toml.map" (dict "m" $v.session "keys" (list "cookieName=cookie_name" "idleTimeout=idle_timeout" "maxLifetime=max_lifetime" "cacheTtl=cache_ttl")) }}

[identity]
{{- include "idgate.toml.kv" (dict "k" "signing_key" "v" (index $refs "signing")) }}
{{- include "idgate.toml.map" (dict "m" $v.identity "keys" (list "audience=audience" "ttl=ttl")) }}
{{- $previous := list }}
{{- range $i, $_ := $v.identity.previousKeys | default list }}
{{- $previous = append $previous (index $refs (printf "previous-%d" $i)) }}
{{- end }}
previous_keys = {{ $previous | toJson }}
{{- if $v.identity.headers }}

[identity.headers]
{{- include "idgate.toml.map" (dict "m" $v.identity.headers "keys" (list "userId=user_id" "groupId=group_id" "tenant=tenant" "email=email" "name=name" "role=role" "assertion=assertion")) }}
{{- end }}

[access]
public_paths = {{ $v.access.publicPaths | default list | toJson }}
api_paths = {{ $v.access.apiPaths | default list | toJson }}
{{- with $v.access.stripHeaders }}
strip_headers = {{ . | toJson }}
{{- end }}
{{- include "idgate.toml.map" (dict "m" $v.access "keys" (list "loginStartsPerMinute=login_starts_per_minute")) }}
{{- range $v.access.rules | default list }}

[[access.rules]]
{{- include "idgate.toml.map" (dict "m" . "keys" (list "name=name" "path=path" "pathRegex=path_regex" "methods=methods" "tenants=tenants" "public=public" "api=api" "allowGroups=allow_groups" "allowRoles=allow_roles" "allowUsers=allow_users")) }}
{{- end }}
{{- range $i, $t := $v.tenants | default list }}

[[tenants]]
{{- include "idgate.toml.kv" (dict "k" "id" "v" $t.id) }}
{{- include "idgate.toml.kv" (dict "k" "hosts" "v" $t.hosts) }}
{{- include "idgate.toml.kv" (dict "k" "default" "v" $t.default) }}
{{- if $t.saml }}

[tenants.saml]
{{- include "idgate.toml.map" (dict "m" $t.saml "keys" (list "idpEntityId=idp_entity_id" "idpSsoUrl=idp_sso_url" "idpCertificate=idp_certificate" "idpMetadata=idp_metadata" "idpMetadataUrl=idp_metadata_url" "idpMetadataRefresh=idp_metadata_refresh" "idpMetadataSigner=idp_metadata_signer" "spEntityId=sp_entity_id" "idpSloUrl=idp_slo_url" "afterLogoutUrl=after_logout_url" "allowIdpInitiated=allow_idp_initiated" "wantAssertionsSigned=want_assertions_signed" "allowSha1=allow_sha1" "spCertificate=sp_certificate" "requireEncryptedAssertions=require_encrypted_assertions" "allowRsa1_5=allow_rsa1_5" "signRequests=sign_requests" "nameIdFormat=name_id_format")) }}
{{- with index $refs (printf "sp-%d" $i) }}
{{- include "idgate.toml.kv" (dict "k" "sp_key" "v" .) }}
{{- end }}
{{- if $t.saml.spPreviousKeys }}
{{- $spPrevious := list }}
{{- range $j, $_ := $t.saml.spPreviousKeys }}
{{- $spPrevious = append $spPrevious (index $refs (printf "sp-%d-previous-%d" $i $j)) }}
{{- end }}
sp_previous_keys = {{ $spPrevious | toJson }}
{{- end }}
{{- if $t.saml.attributes }}

[tenants.saml.attributes]
{{- include "idgate.toml.map" (dict "m" $t.saml.attributes "keys" (list "userId=user_id" "email=email" "firstName=first_name" "lastName=last_name" "groupId=group_id" "groupName=group_name" "role=role")) }}
{{- end }}
{{- end }}
{{- if $t.provisioning }}

[tenants.provisioning]
{{- include "idgate.toml.map" (dict "m" $t.provisioning "keys" (list "createGroups=create_groups" "createUsers=create_users" "linkByEmail=link_by_email" "defaultRole=default_role")) }}
{{- end }}
{{- if hasKey $t "scim" }}

[tenants.scim]
{{- include "idgate.toml.kv" (dict "k" "token" "v" (index $refs (printf "scim-%d" $i))) }}
{{- include "idgate.toml.map" (dict "m" $t.scim "keys" (list "previousTokens=previous_tokens" "nameOrder=name_order")) }}
{{- end }}
{{- if $t.maestrano }}

[tenants.maestrano]
{{- include "idgate.toml.kv" (dict "k" "api_id" "v" $t.maestrano.apiId) }}
{{- include "idgate.toml.kv" (dict "k" "api_key" "v" (index $refs (printf "mno-%d" $i))) }}
{{- include "idgate.toml.map" (dict "m" $t.maestrano "keys" (list "apiHost=api_host" "connecHost=connec_host" "sessionRecheck=session_recheck" "recheckFailMode=recheck_fail_mode" "userMode=user_mode" "connecForwardPath=connec_forward_path")) }}
{{- if $t.maestrano.billing }}

[tenants.maestrano.billing]
{{- include "idgate.toml.map" (dict "m" $t.maestrano.billing "keys" (list "mode=mode" "priceCents=price_cents" "currency=currency" "period=period" "description=description")) }}
{{- end }}
{{- end }}
{{- range $j, $b := $t.bearer | default list }}

[[tenants.bearer]]
{{- include "idgate.toml.map" (dict "m" $b "keys" (list "issuer=issuer" "audience=audience" "jwksUrl=jwks_url")) }}
{{- include "idgate.toml.kv" (dict "k" "jwks" "v" (index $publicRefs (printf "bearer-%d-%d-jwks" $i $j))) }}
{{- include "idgate.toml.kv" (dict "k" "ca_certificate" "v" (index $publicRefs (printf "bearer-%d-%d-ca" $i $j))) }}
{{- include "idgate.toml.map" (dict "m" $b "keys" (list "algorithms=algorithms" "userClaim=user_claim" "groupClaim=group_claim" "emailClaim=email_claim" "roleClaim=role_claim" "nameClaim=name_claim" "forwardAuthorization=forward_authorization")) }}
{{- end }}
{{- end }}
{{- if $v.maestranoDevpl.enabled }}

[maestrano_devpl]
{{- include "idgate.toml.kv" (dict "k" "host" "v" $v.maestranoDevpl.host) }}
{{- include "idgate.toml.kv" (dict "k" "env_key" "v" (index $refs "devpl-key")) }}
{{- include "idgate.toml.kv" (dict "k" "env_secret" "v" (index $refs "devpl-secret")) }}
{{- include "idgate.toml.kv" (dict "k" "refresh" "v" $v.maestranoDevpl.refresh) }}
{{- end }}
{{- $telemetry := $v.telemetry | default dict }}
{{- if $telemetry.otlpEndpoint }}

[telemetry]
{{- include "idgate.toml.map" (dict "m" $telemetry "keys" (list "otlpEndpoint=otlp_endpoint" "serviceName=service_name" "sampleRatio=sample_ratio")) }}
{{- end }}
{{ end }}

{{/*
Pod annotations that roll the pods when the config or the secret changes: the SHA-256 of
idgate.toml as shipped in the ConfigMap, and of the generated Secret's data as JSON (or,
with existingSecret, of its name only: changes inside a Secret the chart does not manage
need a `kubectl rollout restart`). With reload there is no checksum/config: idgate reloads
the mounted ConfigMap itself (watch_config), and the pods stay; secrets are read at start,
so checksum/secret stays.
*/}}
{{- define "idgate.checksumAnnotations" -}}
{{- if not .Values.reload -}}
checksum/config: {{ include "idgate.config" . | sha256sum }}
{{ end -}}
checksum/secret: {{ if .Values.existingSecret }}{{ printf "existingSecret:%s" .Values.existingSecret | sha256sum }}{{ else }}{{ include "idgate.secretDataJson" . | sha256sum }}{{ end }}
{{- end }}
