{{/*
The Envoy bootstrap. It mirrors envoy/local.yaml as rendered by extproc/kube/envoy_config.py;
tests/helm/test_envoy_consistency.py renders both with the same settings and fails on any
difference in the llm listener or the clusters. The local-reply mappers are generated from
Python into files/local-reply-mappers.json (`make chart-files`; a test fails while stale).
*/}}
{{- define "tokengate.envoyConfig" -}}
{{- $v := .Values -}}
{{- $sa := $v.serviceAccountTokens -}}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{ $v.envoy.adminPort }}}

static_resources:
  listeners:
  - name: llm
    address:
      socket_address: {address: 0.0.0.0, port_value: {{ $v.envoy.listenPort }}}
    # Must hold the largest request body the sidecar accepts (it buffers bodies).
    per_connection_buffer_limit_bytes: {{ add $v.envoy.maxRequestBytes 65536 | int64 }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: llm
          codec_type: AUTO
          stream_idle_timeout: {{ $v.envoy.streamIdleTimeout }}
          request_timeout: 0s
          access_log:
          - name: envoy.access_loggers.stderr
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] \"%REQ(:METHOD)% %REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% up=%UPSTREAM_CLUSTER% %DURATION%ms\n"
          local_reply_config:
            mappers: {{ .Files.Get "files/local-reply-mappers.json" | trim }}
          route_config:
            name: llm
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                request_headers_to_remove: [x-tokengate-upstream]
                route:
                  # Set by the sidecar on every request it lets through.
                  cluster_header: x-tokengate-upstream
                  timeout: {{ $v.envoy.routeTimeout }}
                  auto_host_rewrite: true
                  retry_policy:
                    retry_on: {{ $v.envoy.retries.retryOn }}
                    num_retries: {{ $v.envoy.retries.numRetries }}
          http_filters:
          {{- if $sa.enabled }}
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                kubernetes:
                  issuer: {{ $sa.issuer | quote }}
                  audiences: {{ toJson $sa.audiences }}
                  {{- if $sa.jwks.inline }}
                  local_jwks: {inline_string: {{ $sa.jwks.inline | quote }}}
                  {{- else }}
                  remote_jwks:
                    http_uri: {uri: {{ $sa.jwks.remoteUri | quote }}, cluster: jwks, timeout: 5s}
                    cache_duration: {{ $sa.jwks.cacheDuration }}
                    async_fetch: {}
                    retry_policy: {num_retries: 3}
                  {{- end }}
                  from_headers:
                  - {name: authorization, value_prefix: "Bearer "}
                  - {name: x-api-key}
                  forward: false
                  payload_in_metadata: tokengate_service_account
                  clock_skew_seconds: 60
              # A JWT-shaped bearer must verify; gateway keys go on to the sidecar.
              rules:
              - match:
                  prefix: /
                  headers: [{name: authorization, string_match: {safe_regex: {regex: '^[Bb]earer +eyJ[^.]*\.[^.]+\.[^.]*$'}}}]
                requires: {provider_name: kubernetes}
              - match:
                  prefix: /
                  headers: [{name: x-api-key, string_match: {safe_regex: {regex: '^eyJ[^.]*\.[^.]+\.[^.]*$'}}}]
                requires: {provider_name: kubernetes}
          {{- end }}
          - name: envoy.filters.http.ext_proc
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor
              grpc_service:
                envoy_grpc: {cluster_name: tokengate_ext_proc}
                timeout: 30s
              # Fail closed: no sidecar, no upstream call.
              failure_mode_allow: false
              status_on_error: {code: 503}
              processing_mode:
                request_header_mode: SEND
                response_header_mode: SKIP
                request_body_mode: NONE
                response_body_mode: NONE
                request_trailer_mode: SKIP
                response_trailer_mode: SKIP
              allow_mode_override: true
              message_timeout: 1s
              max_message_timeout: 10s
              metadata_options:
                receiving_namespaces: {untyped: [tokengate]}
                {{- if $sa.enabled }}
                forwarding_namespaces: {untyped: [envoy.filters.http.jwt_authn]}
                {{- end }}
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
      {{- if $v.envoy.tls.secretName }}
      transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {filename: /etc/envoy/tls/tls.crt}
              private_key: {filename: /etc/envoy/tls/tls.key}
      {{- end }}
  # For the kubelet: GET /ready from the admin, and nothing else of it.
  - name: probe
    address:
      socket_address: {address: 0.0.0.0, port_value: {{ $v.envoy.probePort }}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: probe
          route_config:
            virtual_hosts:
            - name: probe
              domains: ["*"]
              routes:
              - match: {path: /ready, headers: [{name: ":method", string_match: {exact: GET}}]}
                route: {cluster: envoy_admin, timeout: 2s}
              - match: {prefix: /}
                direct_response: {status: 404}
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router

  clusters:
  - name: tokengate_ext_proc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: tokengate_ext_proc
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: {{ $v.sidecar.extProcPort }}}
  {{- include "tokengate.providerCluster" (dict "root" . "name" "openai") | nindent 2 }}
  {{- include "tokengate.providerCluster" (dict "root" . "name" "anthropic") | nindent 2 }}
  - name: envoy_admin
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: envoy_admin
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: 127.0.0.1, port_value: {{ $v.envoy.adminPort }}}
  {{- if and $sa.enabled (not $sa.jwks.inline) }}
  {{- $u := urlParse $sa.jwks.remoteUri }}
  {{- $host := regexReplaceAll ":[0-9]+$" $u.host "" }}
  {{- $port := ternary (regexFind "[0-9]+$" $u.host) (ternary "443" "80" (eq $u.scheme "https")) (contains ":" $u.host) }}
  - name: jwks
    type: LOGICAL_DNS
    connect_timeout: 5s
    dns_lookup_family: V4_PREFERRED
    load_assignment:
      cluster_name: jwks
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: {{ $host }}, port_value: {{ $port }}}
    {{- if eq $u.scheme "https" }}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {{ $host }}
        common_tls_context:
          validation_context:
            trusted_ca: {filename: /etc/ssl/certs/ca-certificates.crt}
    {{- end }}
  {{- end }}
{{- end -}}
