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

{{- define "tokengate.image" -}}
{{- printf "%s:%s" .Values.image.tokengate.repository (default .Chart.AppVersion .Values.image.tokengate.tag) -}}
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
