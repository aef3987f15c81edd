{{/*
The Envoy bootstrap. It mirrors envoy/local.yaml as rendered by extproc/kube/envoy_config.py;
tests/helm/test_chart_envoy.py renders both with the same settings and fails on any
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
          # One canonical path before the sidecar matches it exactly (see envoy/local.yaml):
          # dot segments resolved, `//` merged, %2F and %5C refused.
          normalize_path: true
          merge_slashes: true
          path_with_escaped_slashes_action: REJECT_REQUEST
          common_http_protocol_options:
            # `x_api_key` reads as `x-api-key` to some servers: dropped before any filter.
            headers_with_underscores_action: DROP_HEADER
          http_protocol_options:
            # Keeps an HTTP/1 connection open after a 400 reply (Envoy closes it otherwise).
            override_stream_error_on_invalid_http_message: true
          access_log:
          - name: envoy.access_loggers.stderr
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StderrAccessLog
              # No query string (a key sent as `?key=` is never logged), no header.
              log_format:
                text_format_source:
                  inline_string: "[%START_TIME%] \"%REQ(:METHOD)% %PATH(NQ)%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% up=%UPSTREAM_CLUSTER% %DURATION%ms id=%REQ(X-REQUEST-ID)%\n"
          local_reply_config:
            mappers: {{ .Files.Get "files/local-reply-mappers.json" | trim }}
          route_config:
            name: llm
            virtual_hosts:
            - name: llm
              domains: ["*"]
              routes:
              - match: {prefix: "/"}
                request_headers_to_remove: [x-tokengate-upstream, trailer]
                # Every answer readable by the sidecar; set by the router, after every filter.
                request_headers_to_add:
                - header: {key: accept-encoding, value: identity}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD
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
          # Request trailers can carry credentials and the sidecar never sees them: all dropped.
          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                request_trailers_mutations:
                - remove_on_match: {key_matcher: {safe_regex: {regex: ".*"}}}
          # Before ext_proc, so after it for responses: the sidecar reads the plain answer,
          # then JSON is gzipped for clients that asked (SSE is not: see envoy/local.yaml).
          - name: envoy.filters.http.compressor
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.compressor.v3.Compressor
              response_direction_config:
                common_config:
                  content_type_matcher: [{prefix: application/json}]
                remove_accept_encoding_header: true
              compressor_library:
                name: gzip
                typed_config:
                  "@type": type.googleapis.com/envoy.extensions.compression.gzip.compressor.v3.Gzip
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
  {{- $host := regexReplaceAll ":[0-9]+$" $u.host "" | trimPrefix "[" | trimSuffix "]" }}
  {{- $port := ternary (regexFind "[0-9]+$" $u.host) (ternary "443" "80" (eq $u.scheme "https")) (regexMatch ":[0-9]+$" $u.host) }}
  {{- $ip := include "tokengate.isAddress" $host }}
  - name: jwks
    type: {{ if $ip }}STATIC{{ else }}LOGICAL_DNS{{ end }}
    connect_timeout: 5s
    dns_lookup_family: V4_PREFERRED
    load_assignment:
      cluster_name: jwks
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {address: {{ $host | quote }}, port_value: {{ $port }}}
    {{- if eq $u.scheme "https" }}
    transport_socket:
      {{- include "tokengate.upstreamTls" $host | nindent 6 }}
    {{- end }}
  {{- end }}
{{- end -}}
