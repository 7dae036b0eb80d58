{{- define "multiarch-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "multiarch-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "multiarch-operator.serviceAccountName" -}}
{{- default (include "multiarch-operator.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- define "multiarch-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "multiarch-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "multiarch-operator.labels" -}}
{{ include "multiarch-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "multiarch-operator.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ default .Chart.AppVersion .Values.image.tag }}
{{- end -}}
{{- end -}}

{{- /* A map as "k=v,k=v" (sorted keys), the form of the operator's list flags. */ -}}
{{- define "multiarch-operator.pairs" -}}
{{- $out := list -}}
{{- range $k, $v := . -}}
{{- $out = append $out (printf "%s=%v" $k $v) -}}
{{- end -}}
{{- join "," $out -}}
{{- end -}}

{{- /*
CEL of the admission policy: "multiarch-operator.everyPlacement" applies the check named by its
argument to spec.builder and to every spec.platformOverrides[] entry; each check is given the CEL
expression of the object it looks at.
*/ -}}
{{- define "multiarch-operator.everyPlacement" -}}
(!has(object.spec.builder) || {{ include . "object.spec.builder" }}) && (!has(object.spec.platformOverrides) || object.spec.platformOverrides.all(o, {{ include . "o" }}))
{{- end -}}

{{- define "multiarch-operator.celNoTolerations" -}}
(!has({{ . }}.tolerations) || size({{ . }}.tolerations) == 0)
{{- end -}}

{{- define "multiarch-operator.celTolerationKeys" -}}
(!has({{ . }}.tolerations) || {{ . }}.tolerations.all(t, has(t.key) && t.key in variables.tolerationKeys))
{{- end -}}

{{- define "multiarch-operator.celNoNodeSelector" -}}
(!has({{ . }}.nodeSelector) || size({{ . }}.nodeSelector) == 0)
{{- end -}}

{{- define "multiarch-operator.celNodeSelectorKeys" -}}
(!has({{ . }}.nodeSelector) || {{ . }}.nodeSelector.all(k, k in variables.nodeSelectorKeys))
{{- end -}}

{{- define "multiarch-operator.celNoResources" -}}
(!has({{ . }}.resources) || ((!has({{ . }}.resources.requests) || size({{ . }}.resources.requests) == 0) && (!has({{ . }}.resources.limits) || size({{ . }}.resources.limits) == 0)))
{{- end -}}

{{- define "multiarch-operator.celResourcesWithinMax" -}}
(!has({{ . }}.resources) || ((!has({{ . }}.resources.requests) || {{ . }}.resources.requests.all(n, !(n in variables.maxResources) || !quantity(string({{ . }}.resources.requests[n])).isGreaterThan(quantity(variables.maxResources[n])))) && (!has({{ . }}.resources.limits) || {{ . }}.resources.limits.all(n, !(n in variables.maxResources) || !quantity(string({{ . }}.resources.limits[n])).isGreaterThan(quantity(variables.maxResources[n]))))))
{{- end -}}
