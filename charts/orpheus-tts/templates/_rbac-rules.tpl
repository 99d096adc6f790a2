{{/* The operator's rules in the namespaces it serves (a ClusterRole, or a Role in each watched namespace). */}}
{{- define "orpheus-tts.namespacedRules" -}}
# kopf: watch voices, patch them (finalizer, progress annotations) and their status.
- apiGroups: [tts.orpheus.io]
  resources: [orpheusvoices]
  verbs: [list, watch, patch]
- apiGroups: [tts.orpheus.io]
  resources: [orpheusvoices/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion on the children need update on the owner's finalizers.
- apiGroups: [tts.orpheus.io]
  resources: [orpheusvoices/finalizers]
  verbs: [update]
# Engine build Jobs: read back, create, add a second voice as owner (merge patch), delete after a failure's backoff.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, create, patch, delete]
# Serving objects: created, then server-side applied (patch); the Deployment is read for status.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, create, patch]
- apiGroups: [""]
  resources: [services]
  verbs: [create, patch]
# The HPA is deleted when a voice turns autoscaling off.
- apiGroups: [autoscaling]
  resources: [horizontalpodautoscalers]
  verbs: [create, patch, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [create, patch]
# A voice's NetworkPolicy, deleted when it turns it off.
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [create, patch, delete]
{{- end }}
