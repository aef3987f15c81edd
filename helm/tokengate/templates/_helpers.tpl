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
- name: {{ .name }}
  type: {{ if regexMatch "^[0-9.]+$" $p.host }}STATIC{{ else }}LOGICAL_DNS{{ end }}
  connect_timeout: 5s
  dns_lookup_family: V4_PREFERRED
  load_assignment:
    cluster_name: {{ .name }}
    endpoints:
    - lb_endpoints:
      - endpoint:
          address:
            socket_address: {address: {{ $p.host }}, port_value: {{ $p.port }}}
  {{- if $p.tls }}
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: {{ $p.host }}
      common_tls_context:
        validation_context:
          trusted_ca: {filename: /etc/ssl/certs/ca-certificates.crt}
  {{- end }}
{{- end -}}

{{/* The policy-sync ServiceAccount token is only needed by that container. */}}
{{- define "tokengate.policySyncEnabled" -}}
{{- if .Values.policyConfigMaps.enabled }}true{{ end -}}
{{- end -}}
