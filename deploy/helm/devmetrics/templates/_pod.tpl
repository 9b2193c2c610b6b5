{{/* The pod template shared by the StatefulSet (embedded store) and the Deployment (HA). */}}
{{- define "devmetrics.podTemplate" -}}
metadata:
  labels:
    {{- include "devmetrics.selectorLabels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    # Roll the pods when the configuration or the chart's secrets change (no hot reload).
    checksum/config: {{ include "devmetrics.config" . | sha256sum }}
    {{- if and .Values.secrets (not .Values.existingSecret) }}
    checksum/secrets: {{ toYaml .Values.secrets | sha256sum }}
    {{- end }}
    {{- if .Values.ha.enabled }}
    checksum/ha: {{ printf "%s|%s" .Values.ha.redis.url .Values.ha.queue.rabbitmq.url | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "devmetrics.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.serviceAccount.automountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  containers:
    - name: devmetrics
      image: {{ include "devmetrics.image" . }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config.file
        - /etc/devmetrics/config.yaml
      workingDir: {{ .Values.mountPath }}
      ports:
        - name: http-metrics
          containerPort: {{ include "devmetrics.metricsPort" . }}
          protocol: TCP
        {{- with include "devmetrics.webhookPort" . }}
        - name: http-webhooks
          containerPort: {{ . }}
          protocol: TCP
        {{- end }}
      env:
        # The pod's name: ha.replica_id's default is HOSTNAME-pid.
        - name: HOSTNAME
          valueFrom:
            fieldRef:
              fieldPath: metadata.name
        {{- if include "devmetrics.haRabbitFromChart" . }}
        - name: DEVMETRICS_QUEUE__RABBITMQ__URL
          valueFrom:
            secretKeyRef:
              {{- if .Values.ha.queue.rabbitmq.existingSecret }}
              name: {{ .Values.ha.queue.rabbitmq.existingSecret }}
              key: {{ .Values.ha.queue.rabbitmq.existingSecretKey }}
              {{- else }}
              name: {{ include "devmetrics.haSecretName" . }}
              key: rabbitmq-url
              {{- end }}
        {{- end }}
        {{- with .Values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.envFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.startupProbe }}
      startupProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.livenessProbe }}
      livenessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.readinessProbe }}
      readinessProbe:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/devmetrics
          readOnly: true
        - name: data
          mountPath: {{ .Values.mountPath }}
        # SQLite's temporary files (large sorts) with a read-only root filesystem.
        - name: tmp
          mountPath: /tmp
        {{- if include "devmetrics.secretName" . }}
        - name: secrets
          mountPath: {{ .Values.secretsMountPath }}
          readOnly: true
        {{- end }}
        {{- if include "devmetrics.haRedisFromChart" . }}
        - name: ha
          mountPath: {{ include "devmetrics.haMountPath" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "devmetrics.fullname" . }}
    - name: tmp
      emptyDir:
        sizeLimit: 256Mi
    {{- if .Values.ha.enabled }}
    - name: data
      {{- toYaml .Values.ha.spoolVolume | nindent 6 }}
    {{- else if not .Values.persistence.enabled }}
    - name: data
      emptyDir: {}
    {{- end }}
    {{- with include "devmetrics.secretName" . }}
    - name: secrets
      secret:
        secretName: {{ . }}
        defaultMode: 0440
    {{- end }}
    {{- if include "devmetrics.haRedisFromChart" . }}
    - name: ha
      secret:
        {{- if .Values.ha.redis.existingSecret }}
        secretName: {{ .Values.ha.redis.existingSecret }}
        items:
          - key: {{ .Values.ha.redis.existingSecretKey }}
            path: redis-url
        {{- else }}
        secretName: {{ include "devmetrics.haSecretName" . }}
        items:
          - key: redis-url
            path: redis-url
        {{- end }}
        defaultMode: 0440
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.topologySpreadConstraints }}
  topologySpreadConstraints:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
