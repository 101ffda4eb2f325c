{{- define "kiln.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "kiln.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiln.workflowNamespace" -}}
{{- default .Release.Namespace .Values.argo.namespace -}}
{{- end -}}

{{- define "kiln.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "kiln.postgresql.fullname" -}}
{{- printf "%s-postgresql" (include "kiln.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "kiln.postgresql.secretName" -}}
{{- default (include "kiln.postgresql.fullname" .) .Values.postgresql.existingSecret -}}
{{- end -}}

{{/* The rules the controller needs: Argo Workflows it submits, follows and stops; their pods'
     logs; the serving Deployments, Services and autoscalers it renders for Deployment specs. */}}
{{- define "kiln.rbacRules" -}}
- apiGroups: [argoproj.io]
  resources: [workflows]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [argoproj.io]
  resources: [workflowtemplates, cronworkflows]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [pods, pods/log]
  verbs: [get, list, watch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, get, list, watch, patch, update, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [""]   # kiln-workspace-quotas: the workspaces' quotas as Argo semaphores
  resources: [configmaps]
  verbs: [create, get, patch]
{{- end -}}
