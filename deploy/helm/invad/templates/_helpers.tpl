{{/* Names and labels ------------------------------------------------------------------------- */}}

{{- define "invad.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "invad.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "invad.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "invad.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* A component's resource name: <fullname>-<component>, within the 63-character limit. */}}
{{- define "invad.componentName" -}}
{{- printf "%s-%s" (include "invad.fullname" .root | trunc (int (sub 62 (len .component))) | trimSuffix "-") .component -}}
{{- end -}}

{{- define "invad.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: {{ include "invad.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: invad
{{- end -}}

{{/* Selector labels of one component: call with (dict "root" $ "component" "worker"). */}}
{{- define "invad.selectorLabels" -}}
app.kubernetes.io/name: {{ include "invad.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "invad.componentLabels" -}}
{{ include "invad.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "invad.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "invad.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "invad.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Derived settings ------------------------------------------------------------------------- */}}

{{- define "invad.dlqTopic" -}}
{{- default (printf "%s.dlq" .Values.kafka.topic) .Values.kafka.dlqTopic -}}
{{- end -}}

{{- define "invad.saslEnabled" -}}
{{- if hasPrefix "SASL_" .Values.kafka.securityProtocol }}true{{ end -}}
{{- end -}}

{{- define "invad.kafkaTlsEnabled" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") }}true{{ end -}}
{{- end -}}

{{/* Where a CA bundle from a Secret is mounted: /etc/invad/<name>/<key>. */}}
{{- define "invad.kafkaCaFile" -}}
{{- printf "/etc/invad/kafka-ca/%s" .Values.kafka.tls.caKey -}}
{{- end -}}
{{- define "invad.redisCaFile" -}}
{{- printf "/etc/invad/redis-ca/%s" .Values.redis.tls.caKey -}}
{{- end -}}

{{/* Seconds the kubelet waits after SIGTERM: the worst batch, the drain timeout and a margin. */}}
{{- define "invad.gracePeriod" -}}
{{- add (int .Values.worker.worstBatchSeconds) (int .Values.worker.drainTimeoutSeconds) (int .Values.worker.graceMarginSeconds) -}}
{{- end -}}

{{/* Kafka settings every component reads (workers, the topic Job, the producer), as a YAML map of
     variable -> value. The Job is a pre-install hook and runs before the ConfigMap exists, so it takes
     these inline instead of from the ConfigMap. */}}
{{- define "invad.kafkaSettings" -}}
{{- $names := .Values.envNames -}}
INVAD_KAFKA_BOOTSTRAP: {{ .Values.kafka.bootstrap | quote }}
INVAD_TOPIC: {{ .Values.kafka.topic | quote }}
INVAD_DLQ_TOPIC: {{ include "invad.dlqTopic" . | quote }}
{{ $names.kafkaSecurityProtocol }}: {{ .Values.kafka.securityProtocol | quote }}
{{- if include "invad.saslEnabled" . }}
{{ $names.kafkaSaslMechanism }}: {{ .Values.kafka.sasl.mechanism | quote }}
{{- end }}
{{- if and (include "invad.kafkaTlsEnabled" .) .Values.kafka.tls.caSecret }}
{{ $names.kafkaSslCafile }}: {{ include "invad.kafkaCaFile" . | quote }}
{{- end }}
{{- end -}}

{{/* The worker's settings as a YAML map of variable -> value: what the ConfigMap holds. */}}
{{- define "invad.workerSettings" -}}
{{ include "invad.kafkaSettings" . }}
INVAD_GROUP: {{ .Values.kafka.group | quote }}
INVAD_REDIS_PREFIX: {{ .Values.redis.prefix | quote }}
{{- if .Values.redis.tls.caSecret }}
{{ .Values.envNames.redisSslCaCerts }}: {{ include "invad.redisCaFile" . | quote }}
{{- end }}
INVAD_S3_ENDPOINT: {{ .Values.s3.endpoint | quote }}
INVAD_S3_BUCKET: {{ .Values.s3.bucket | quote }}
INVAD_S3_PREFIX: {{ .Values.s3.prefix | quote }}
AWS_REGION: {{ .Values.s3.region | quote }}
{{- if and (not .Values.models.bundles) (not .Values.models.pointers) }}
{{- fail "models: set models.bundles (bundle paths) or models.pointers (products that follow `invad models activate`), or both" }}
{{- end }}
{{- if .Values.models.bundles }}
INVAD_MODELS: {{ .Values.models.bundles | quote }}
{{- end }}
{{- if .Values.models.pointers }}
INVAD_MODEL_POINTERS: {{ .Values.models.pointers | quote }}
INVAD_MODEL_CACHE_DIR: "/var/cache/invad-models"
{{- end }}
INVAD_DEVICE: {{ ternary "cuda" "cpu" (gt (int .Values.worker.gpu.count) 0) | quote }}
INVAD_DRAIN_TIMEOUT_S: {{ .Values.worker.drainTimeoutSeconds | toString | quote }}
{{ .Values.envNames.metricsPort }}: {{ .Values.metrics.port | toString | quote }}
{{- range $name, $value := .Values.worker.settings }}
{{ $name }}: {{ $value | toString | quote }}
{{- end }}
{{- end -}}

{{/* Credentials, always by reference to a Secret: env entries. */}}
{{- define "invad.kafkaSecretEnv" -}}
{{- if include "invad.saslEnabled" . }}
- name: {{ .Values.envNames.kafkaSaslUsername }}
  valueFrom: {secretKeyRef: {name: {{ .Values.kafka.sasl.existingSecret | quote }}, key: {{ .Values.kafka.sasl.usernameKey | quote }}}}
- name: {{ .Values.envNames.kafkaSaslPassword }}
  valueFrom: {secretKeyRef: {name: {{ .Values.kafka.sasl.existingSecret | quote }}, key: {{ .Values.kafka.sasl.passwordKey | quote }}}}
{{- end }}
{{- end -}}

{{- define "invad.s3SecretEnv" -}}
{{- with .Values.s3.credentials }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom: {secretKeyRef: {name: {{ .existingSecret | quote }}, key: {{ .accessKeyIdKey | quote }}}}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom: {secretKeyRef: {name: {{ .existingSecret | quote }}, key: {{ .secretAccessKeyKey | quote }}}}
{{- end }}
{{- end }}
{{- end -}}

{{/* CA bundles from Secrets: volumes and their mounts (only those configured). */}}
{{- define "invad.caVolumes" -}}
{{- if and (include "invad.kafkaTlsEnabled" .) .Values.kafka.tls.caSecret }}
- name: kafka-ca
  secret: {secretName: {{ .Values.kafka.tls.caSecret | quote }}, items: [{key: {{ .Values.kafka.tls.caKey | quote }}, path: {{ .Values.kafka.tls.caKey | quote }}}]}
{{- end }}
{{- if .Values.redis.tls.caSecret }}
- name: redis-ca
  secret: {secretName: {{ .Values.redis.tls.caSecret | quote }}, items: [{key: {{ .Values.redis.tls.caKey | quote }}, path: {{ .Values.redis.tls.caKey | quote }}}]}
{{- end }}
{{- end -}}

{{- define "invad.caMounts" -}}
{{- if and (include "invad.kafkaTlsEnabled" .) .Values.kafka.tls.caSecret }}
- {name: kafka-ca, mountPath: /etc/invad/kafka-ca, readOnly: true}
{{- end }}
{{- if .Values.redis.tls.caSecret }}
- {name: redis-ca, mountPath: /etc/invad/redis-ca, readOnly: true}
{{- end }}
{{- end -}}

{{/* Checks that span several values; each failure names the value to change. ------------------ */}}
{{- define "invad.validate" -}}
{{- $v := .Values -}}
{{- $partitions := int $v.kafka.partitions -}}
{{- if lt $partitions 1 -}}
{{- fail (printf "kafka.partitions=%v: must be at least 1 (the partitions of topic %s)" $v.kafka.partitions $v.kafka.topic) -}}
{{- end -}}
{{- if $v.keda.enabled -}}
{{- if gt (int $v.keda.maxReplicas) $partitions -}}
{{- fail (printf "keda.maxReplicas=%v exceeds kafka.partitions=%v: a consumer group never uses more workers than partitions, the extra ones sit idle. Lower keda.maxReplicas, or add partitions to %s first and raise kafka.partitions." $v.keda.maxReplicas $v.kafka.partitions $v.kafka.topic) -}}
{{- end -}}
{{- if gt (int $v.keda.minReplicas) (int $v.keda.maxReplicas) -}}
{{- fail (printf "keda.minReplicas=%v exceeds keda.maxReplicas=%v" $v.keda.minReplicas $v.keda.maxReplicas) -}}
{{- end -}}
{{- else if gt (int $v.worker.replicas) $partitions -}}
{{- fail (printf "worker.replicas=%v exceeds kafka.partitions=%v: a consumer group never uses more workers than partitions, the extra ones sit idle. Lower worker.replicas, or add partitions to %s first and raise kafka.partitions." $v.worker.replicas $v.kafka.partitions $v.kafka.topic) -}}
{{- end -}}
{{- if eq (include "invad.dlqTopic" .) $v.kafka.topic -}}
{{- fail (printf "kafka.dlqTopic=%s: the dead-letter topic must differ from kafka.topic" $v.kafka.dlqTopic) -}}
{{- end -}}
{{- if and (include "invad.saslEnabled" .) (not $v.kafka.sasl.existingSecret) -}}
{{- fail (printf "kafka.securityProtocol=%s needs kafka.sasl.existingSecret: the name of a Secret with keys %s and %s" $v.kafka.securityProtocol $v.kafka.sasl.usernameKey $v.kafka.sasl.passwordKey) -}}
{{- end -}}
{{- if and $v.kafka.tls.caSecret (not (include "invad.kafkaTlsEnabled" .)) -}}
{{- fail (printf "kafka.tls.caSecret is set but kafka.securityProtocol=%s does not use TLS: use SSL or SASL_SSL, or clear kafka.tls.caSecret" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if not $v.redis.existingSecret -}}
{{- fail "redis.existingSecret is empty: name the Secret holding the Redis URL (key redis.urlKey), e.g. kubectl create secret generic invad-redis --from-literal=url=rediss://:PASSWORD@redis:6379/0" -}}
{{- end -}}
{{- if le (int (include "invad.gracePeriod" .)) (int $v.worker.drainTimeoutSeconds) -}}
{{- fail "worker.worstBatchSeconds + worker.graceMarginSeconds must be positive: the grace period must outlast the drain timeout" -}}
{{- end -}}
{{- $derived := list "INVAD_KAFKA_BOOTSTRAP" "INVAD_TOPIC" "INVAD_DLQ_TOPIC" "INVAD_GROUP" "INVAD_REDIS_PREFIX" "INVAD_S3_ENDPOINT" "INVAD_S3_BUCKET" "INVAD_S3_PREFIX" "AWS_REGION" "AWS_DEFAULT_REGION" "INVAD_MODELS" "INVAD_MODEL_POINTERS" "INVAD_MODEL_CACHE_DIR" "INVAD_DEVICE" "INVAD_DRAIN_TIMEOUT_S" "INVAD_WORKER_ID" -}}
{{- $derived = concat $derived (list $v.envNames.kafkaSecurityProtocol $v.envNames.kafkaSaslMechanism $v.envNames.kafkaSslCafile $v.envNames.redisSslCaCerts $v.envNames.metricsPort) -}}
{{- $secrets := list "INVAD_REDIS_URL" "AWS_ACCESS_KEY_ID" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" $v.envNames.kafkaSaslUsername $v.envNames.kafkaSaslPassword -}}
{{- range $name, $value := $v.worker.settings -}}
{{- if has $name $secrets -}}
{{- fail (printf "worker.settings.%s is a credential: never put it in values; store it in a Secret and name that Secret (redis.existingSecret, s3.credentials.existingSecret, kafka.sasl.existingSecret)" $name) -}}
{{- end -}}
{{- if has $name $derived -}}
{{- fail (printf "worker.settings.%s is set by the chart from its own section (kafka, redis, s3, models, worker.gpu, worker.drainTimeoutSeconds, metrics.port): set it there" $name) -}}
{{- end -}}
{{- if not (regexMatch "^[A-Z][A-Z0-9_]*$" $name) -}}
{{- fail (printf "worker.settings.%s: not a variable name; keys are the INVAD_* variables of docs/CONFIGURATION.md" $name) -}}
{{- end -}}
{{- if kindIs "map" $value -}}
{{- fail (printf "worker.settings.%s: must be a string, not a map" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
