{{/* Chart name, truncated to the 63 characters a label value allows. */}}
{{- define "lamina.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: <release>-<chart> unless the release name already contains the chart name. */}}
{{- define "lamina.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "lamina.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "lamina.selectorLabels" -}}
app.kubernetes.io/name: {{ include "lamina.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "lamina.labels" -}}
helm.sh/chart: {{ include "lamina.chart" . }}
{{ include "lamina.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lamina
{{- end }}

{{- define "lamina.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lamina.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Secret holding the internal-key seed (key `seed`): the user's, or the one the chart keeps. */}}
{{- define "lamina.keySeedSecretName" -}}
{{- default (printf "%s-key-seed" (include "lamina.fullname" .)) .Values.internalKeys.existingSecret }}
{{- end }}

{{- define "lamina.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Namespaces watched when not cluster-wide; fails the render when the list is empty. */}}
{{- define "lamina.watchNamespaces" -}}
{{- if not .Values.watch.allNamespaces }}
{{- if not .Values.watch.namespaces }}
{{- fail "watch.namespaces must list at least one namespace when watch.allNamespaces is false" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
RBAC rules in every watched namespace; equal to lamina_operator.rbac.RULES (a test compares them).
Used by the ClusterRole (all namespaces) or by one Role per watched namespace.
*/}}
{{- define "lamina.namespacedRules" -}}
# kopf watches the custom resources and patches its progress annotations on them.
- apiGroups: ["lamina.dev"]
  resources: ["servingdeployments", "autoscalingpolicies"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["lamina.dev"]
  resources: ["servingdeployments/status", "autoscalingpolicies/status"]
  verbs: ["get", "patch", "update"]
# ownerReferences with blockOwnerDeletion (OwnerReferencesPermissionEnforcement).
- apiGroups: ["lamina.dev"]
  resources: ["servingdeployments/finalizers"]
  verbs: ["update"]
# The pools and the managed Redis: applied, and pruned when no longer desired.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Services and the engine ConfigMap.
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "create", "patch", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "create", "patch", "delete"]
# The Ingress NetworkPolicy of each pool.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "create", "patch", "delete"]
# The autoscaler finds the ready pool pods (their IPs) to read their /metrics, and sets
# their pod-deletion-cost before a scale-in.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "patch"]
# The internal key and managed Redis password Secrets: created once, never read back (pods
# read them by secretKeyRef), deleted with the managed Redis / replaced on a new seed. No
# get/list/watch: the operator cannot read Secrets it did not create.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
# Leader election with --namespace: a KopfPeering in each watched namespace.
- apiGroups: ["kopf.dev"]
  resources: ["kopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}

{{/*
Reading Secrets (lamina_operator.rbac.SECRET_READ_RULES): only to check that the Secrets a spec
names (passwordSecretRef, redis.tls) exist and hold their keys before pods wait on them. In each
watched namespace's Role; with watch.allNamespaces, a separate ClusterRole bound only where
rbac.secretNamespaces says (elsewhere the check is skipped).
*/}}
{{- define "lamina.secretRules" -}}
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
{{- end }}

{{/* Cluster-scoped rules, needed only with --all-namespaces (lamina_operator.rbac.CLUSTER_RULES). */}}
{{- define "lamina.clusterRules" -}}
# kopf checks which CRDs exist (and whether peering is installed).
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
# kopf follows namespaces with --all-namespaces.
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
# Leader election with --all-namespaces.
- apiGroups: ["kopf.dev"]
  resources: ["clusterkopfpeerings"]
  verbs: ["get", "list", "watch", "patch"]
{{- end }}
