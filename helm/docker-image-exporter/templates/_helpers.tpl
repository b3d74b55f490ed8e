{{/* Chart name (nameOverride wins). */}}
{{- define "docker-image-exporter.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name; release name alone when it already contains the chart name. */}}
{{- define "docker-image-exporter.fullname" -}}
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

{{- define "docker-image-exporter.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "docker-image-exporter.selectorLabels" -}}
app.kubernetes.io/name: {{ include "docker-image-exporter.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "docker-image-exporter.labels" -}}
helm.sh/chart: {{ include "docker-image-exporter.chart" . }}
{{ include "docker-image-exporter.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: exporter
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "docker-image-exporter.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "docker-image-exporter.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Namespace of the namespaced objects: namespaceOverride, else the release namespace. */}}
{{- define "docker-image-exporter.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/*
The image reference, <registry>/<repository>:<tag>[@<digest>] as in the prometheus-community charts
(global.imageRegistry wins over image.registry; no registry: the repository as given). There is no
published image, so an empty repository fails rather than pointing at an image nobody pushed.
*/}}
{{- define "docker-image-exporter.image" -}}
{{- $image := .Values.image }}
{{- if not $image.repository }}
{{- fail "image.repository is required: no docker-image-exporter image is published yet. Build and push one (make image IMAGE=registry.example.com/docker-image-exporter:0.1.0; docker push ...) and set image.repository (with image.registry / image.tag as needed), e.g. --set image.repository=registry.example.com/docker-image-exporter" }}
{{- end }}
{{- $registry := default $image.registry ((.Values.global | default dict).imageRegistry) }}
{{- $name := ternary (printf "%s/%s" $registry $image.repository) $image.repository (not (empty $registry)) }}
{{- if $image.digest }}
{{- if $image.tag }}
{{- printf "%s:%s@%s" $name $image.tag $image.digest }}
{{- else }}
{{- printf "%s@%s" $name $image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" $name (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/*
The pod's securityContext: podSecurityContext plus the Docker socket's group. The gid that owns the socket
differs between distributions and cannot be learned at render time (an init container could stat it, but
runAsGroup/supplementalGroups of the main container are fixed before any container runs), so it is required,
unless docker.runAsRoot: uid 0 connects as the socket's owner (root:docker 0660) without any capability.
*/}}
{{- define "docker-image-exporter.podSecurityContext" -}}
{{- $sc := deepCopy (.Values.podSecurityContext | default dict) }}
{{- $docker := .Values.docker | default dict }}
{{- $group := $docker.socketGroup }}
{{- if $docker.runAsRoot }}
{{- $_ := set $sc "runAsUser" 0 }}
{{- $_ := set $sc "runAsGroup" 0 }}
{{- $_ := set $sc "runAsNonRoot" false }}
{{- else if kindIs "invalid" $group }}
{{- $socket := include "docker-image-exporter.socketPath" . }}
{{- fail (printf "docker.socketGroup is required: the gid that owns %s on the nodes (run `stat -c %%g %s` on a node, e.g. --set docker.socketGroup=998; 0 when it is root:root). The exporter runs as uid 10151 and without that group cannot connect (docker_up stays 0). Alternatively docker.runAsRoot=true runs it as root." $socket $socket) }}
{{- end }}
{{- if not (kindIs "invalid" $group) }}
{{- $groups := list (int64 $group) }}
{{- range ($sc.supplementalGroups | default list) }}
{{- $groups = append $groups (int64 .) }}
{{- end }}
{{- $_ := set $sc "supplementalGroups" ($groups | uniq) }}
{{- end }}
{{- toYaml $sc }}
{{- end }}

{{/*
Values renamed in 0.2.0: fail naming the new key instead of silently ignoring the old one (the schema lets
the old keys through for this message).
*/}}
{{- define "docker-image-exporter.renamedValues" -}}
{{- if hasKey .Values "dockerSocketGroup" }}
{{- fail "dockerSocketGroup was renamed docker.socketGroup (and no longer defaults to 0); see Upgrading in the chart README" }}
{{- end }}
{{- if hasKey .Values "serviceMonitor" }}
{{- fail "serviceMonitor.* was renamed prometheus.monitor.* (serviceMonitor.labels is prometheus.monitor.additionalLabels); see Upgrading in the chart README" }}
{{- end }}
{{- if hasKey (.Values.prometheusRule | default dict) "labels" }}
{{- fail "prometheusRule.labels was renamed prometheusRule.additionalLabels; see Upgrading in the chart README" }}
{{- end }}
{{- end }}

{{/*
The runtime's socket and image filesystem on the node (runtime: docker, containerd or crio). A CRI socket is
mounted at its own path, Docker's at /var/run/docker.sock.
*/}}
{{- define "docker-image-exporter.socketPath" -}}
{{- $runtime := .Values.runtime | default "docker" }}
{{- if eq $runtime "containerd" }}{{ .Values.hostPaths.containerdSocket }}
{{- else if eq $runtime "crio" }}{{ .Values.hostPaths.crioSocket }}
{{- else }}{{ .Values.hostPaths.dockerSocket }}{{ end }}
{{- end }}
{{- define "docker-image-exporter.imageFsPath" -}}
{{- $runtime := .Values.runtime | default "docker" }}
{{- if eq $runtime "containerd" }}{{ .Values.hostPaths.containerdImageFs }}
{{- else if eq $runtime "crio" }}{{ .Values.hostPaths.crioImageFs }}
{{- else }}{{ .Values.hostPaths.dockerDataRoot }}{{ end }}
{{- end }}
{{- define "docker-image-exporter.cri" -}}
{{- if ne (.Values.runtime | default "docker") "docker" }}true{{ end }}
{{- end }}

{{/* Paths inside the container. */}}
{{- define "docker-image-exporter.configDir" -}}/etc/docker-image-exporter/config{{- end }}
{{- define "docker-image-exporter.secretDir" -}}/etc/docker-image-exporter/secrets{{- end }}
{{- define "docker-image-exporter.stateDir" -}}/var/lib/docker-image-exporter{{- end }}
{{- define "docker-image-exporter.tlsDir" -}}/etc/docker-image-exporter/tls{{- end }}

{{/* "true" when web.tls.enabled, else empty; fails on values that cannot work. */}}
{{- define "docker-image-exporter.tlsEnabled" -}}
{{- $tls := .Values.web.tls | default dict }}
{{- if $tls.enabled }}
{{- if not $tls.secretName }}
{{- fail "web.tls.enabled needs web.tls.secretName: a kubernetes.io/tls Secret with tls.crt and tls.key (and ca.crt to verify client certificates)" }}
{{- end }}
{{- if and $tls.maxVersion (lt $tls.maxVersion (default "TLS12" $tls.minVersion)) }}
{{- fail (printf "web.tls.maxVersion %s is below web.tls.minVersion %s" $tls.maxVersion (default "TLS12" $tls.minVersion)) }}
{{- end }}
{{- true }}
{{- end }}
{{- end }}

{{/* "true" when the exporter verifies client certificates of every connection (probes cannot be HTTPS). */}}
{{- define "docker-image-exporter.clientCertRequired" -}}
{{- if and (include "docker-image-exporter.tlsEnabled" .) (eq (toString .Values.web.tls.clientAuthType) "RequireAndVerifyClientCert") }}true{{ end }}
{{- end }}

{{/*
The --web.config.file contents (exporter-toolkit format), or empty when neither TLS nor headers are set
(plain HTTP, no flag).
*/}}
{{- define "docker-image-exporter.webConfig" -}}
{{- $web := dict }}
{{- if include "docker-image-exporter.tlsEnabled" . }}
{{- $tls := .Values.web.tls }}
{{- $dir := include "docker-image-exporter.tlsDir" . }}
{{- $auth := default "NoClientCert" $tls.clientAuthType }}
{{- $server := dict "cert_file" (printf "%s/tls.crt" $dir) "key_file" (printf "%s/tls.key" $dir) "client_auth_type" $auth "min_version" (default "TLS12" $tls.minVersion) }}
{{- if ne $auth "NoClientCert" }}
{{- $_ := set $server "client_ca_file" (printf "%s/ca.crt" $dir) }}
{{- end }}
{{- with $tls.maxVersion }}
{{- $_ := set $server "max_version" . }}
{{- end }}
{{- $_ := set $web "tls_server_config" $server }}
{{- end }}
{{- with .Values.web.headers }}
{{- $_ := set $web "http_server_config" (dict "headers" .) }}
{{- end }}
{{- if $web }}
{{- toYaml $web }}
{{- end }}
{{- end }}

{{/*
A probe from values, adapted to the web config: with TLS an httpGet probe without a scheme gets HTTPS;
with RequireAndVerifyClientCert an httpGet probe becomes a tcpSocket probe on the same port, because the
kubelet presents no client certificate and the TLS handshake would fail. Other probe kinds pass unchanged.
Call with (dict "probe" .Values.livenessProbe "root" $).
*/}}
{{- define "docker-image-exporter.probe" -}}
{{- $probe := deepCopy .probe }}
{{- if and (hasKey $probe "httpGet") (include "docker-image-exporter.tlsEnabled" .root) }}
{{- if include "docker-image-exporter.clientCertRequired" .root }}
{{- $port := get $probe.httpGet "port" | default "http" }}
{{- $probe = omit $probe "httpGet" }}
{{- $_ := set $probe "tcpSocket" (dict "port" $port) }}
{{- else if not (hasKey $probe.httpGet "scheme") }}
{{- $_ := set $probe.httpGet "scheme" "HTTPS" }}
{{- end }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/*
The ServiceMonitor endpoint's tlsConfig: prometheus.monitor.tlsConfig when set, else the CA (and with
RequireAndVerifyClientCert the client certificate) of web.tls.secretName, which prometheus-operator can
only read from the ServiceMonitor's own namespace.
*/}}
{{- define "docker-image-exporter.serviceMonitorTLSConfig" -}}
{{- $namespace := include "docker-image-exporter.namespace" . }}
{{- if .Values.prometheus.monitor.tlsConfig }}
{{- toYaml .Values.prometheus.monitor.tlsConfig }}
{{- else }}
{{- $smNamespace := default $namespace .Values.prometheus.monitor.namespace }}
{{- if ne $smNamespace $namespace }}
{{- fail (printf "web.tls with prometheus.monitor.namespace %s: the default prometheus.monitor.tlsConfig references Secret %s, which prometheus-operator only reads from the ServiceMonitor's namespace; set prometheus.monitor.tlsConfig (e.g. ca/cert/keySecret from a Secret in %s, or caFile/certFile/keyFile mounted into Prometheus)" $smNamespace .Values.web.tls.secretName $smNamespace) }}
{{- end }}
{{- $secret := .Values.web.tls.secretName }}
{{- $cfg := dict "serverName" (printf "%s.%s.svc" (include "docker-image-exporter.fullname" .) $namespace) "ca" (dict "secret" (dict "name" $secret "key" "ca.crt")) }}
{{- if include "docker-image-exporter.clientCertRequired" . }}
{{- $_ := set $cfg "cert" (dict "secret" (dict "name" $secret "key" "tls.crt")) }}
{{- $_ := set $cfg "keySecret" (dict "name" $secret "key" "tls.key") }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}
{{- end }}

{{/* "true" when config.remediation.enabled is true, else empty. */}}
{{- define "docker-image-exporter.remediationEnabled" -}}
{{- $rem := get (.Values.config | default dict) "remediation" | default dict }}
{{- if eq (toString (get $rem "enabled")) "true" }}true{{ end }}
{{- end }}

{{/* Name of the Secret holding the webhook credentials. */}}
{{- define "docker-image-exporter.secretName" -}}
{{- default (printf "%s-webhook" (include "docker-image-exporter.fullname" .)) .Values.webhookAuth.existingSecret }}
{{- end }}

{{/* Which credential files exist ("true" or empty). */}}
{{- define "docker-image-exporter.hasBearer" -}}
{{- if .Values.webhookAuth.existingSecret }}
{{- if .Values.webhookAuth.existingSecretKeys.bearerToken }}true{{ end }}
{{- else if .Values.webhookAuth.bearerToken }}true{{ end }}
{{- end }}

{{- define "docker-image-exporter.hasBasic" -}}
{{- if .Values.webhookAuth.existingSecret }}
{{- if .Values.webhookAuth.existingSecretKeys.basicAuthPassword }}true{{ end }}
{{- else if .Values.webhookAuth.basicAuth.password }}true{{ end }}
{{- end }}

{{/* "true" when the pod mounts the credentials Secret. */}}
{{- define "docker-image-exporter.mountSecret" -}}
{{- if and (include "docker-image-exporter.remediationEnabled" .) (or (include "docker-image-exporter.hasBearer" .) (include "docker-image-exporter.hasBasic" .)) }}true{{ end }}
{{- end }}

{{/*
The exporter's config file: .Values.config plus what the chart knows (where it mounts the socket, the data
root, the state directory and the credential files). Explicit settings in .Values.config win, except that
credentials are never accepted twice.
*/}}
{{- define "docker-image-exporter.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) }}
{{- if include "docker-image-exporter.cri" . }}
{{- if hasKey (get $cfg "docker" | default dict) "host" }}
{{- fail (printf "config.docker.host is set but runtime is %s: the exporter reads either a Docker engine or a CRI runtime, not both" .Values.runtime) }}
{{- end }}
{{- $runtimeCfg := get $cfg "runtime" | default dict }}
{{- if not (hasKey $runtimeCfg "endpoint") }}
{{- $_ := set $runtimeCfg "endpoint" (printf "unix://%s" (include "docker-image-exporter.socketPath" .)) }}
{{- end }}
{{- $_ := set $cfg "runtime" $runtimeCfg }}
{{- else }}
{{- $docker := get $cfg "docker" | default dict }}
{{- if not (hasKey $docker "host") }}
{{- $_ := set $docker "host" "unix:///var/run/docker.sock" }}
{{- end }}
{{- $_ := set $cfg "docker" $docker }}
{{- end }}
{{- $fs := get $cfg "filesystem" | default dict }}
{{- if not (hasKey $fs "path") }}
{{- $_ := set $fs "path" (include "docker-image-exporter.imageFsPath" .) }}
{{- end }}
{{- $_ := set $cfg "filesystem" $fs }}
{{- $state := get $cfg "state" | default dict }}
{{- if not (hasKey $state "path") }}
{{- $_ := set $state "path" (printf "%s/state.json" (include "docker-image-exporter.stateDir" .)) }}
{{- end }}
{{- $_ := set $cfg "state" $state }}
{{- if include "docker-image-exporter.remediationEnabled" . }}
{{- $rem := get $cfg "remediation" }}
{{- $auth := get $rem "auth" | default dict }}
{{- $secretDir := include "docker-image-exporter.secretDir" . }}
{{- if include "docker-image-exporter.hasBearer" . }}
{{- if or (hasKey $auth "bearer_token") (hasKey $auth "bearer_token_file") }}
{{- fail "set the bearer token either in webhookAuth or in config.remediation.auth, not both" }}
{{- end }}
{{- $_ := set $auth "bearer_token_file" (printf "%s/bearer-token" $secretDir) }}
{{- end }}
{{- if include "docker-image-exporter.hasBasic" . }}
{{- if hasKey $auth "basic_auth" }}
{{- fail "set basic auth either in webhookAuth or in config.remediation.auth, not both" }}
{{- end }}
{{- if not .Values.webhookAuth.basicAuth.username }}
{{- fail "webhookAuth.basicAuth.username is required with a basic-auth password" }}
{{- end }}
{{- $_ := set $auth "basic_auth" (dict "username" .Values.webhookAuth.basicAuth.username "password_file" (printf "%s/basic-auth-password" $secretDir)) }}
{{- end }}
{{- if not (or (hasKey $auth "bearer_token") (hasKey $auth "bearer_token_file") (hasKey $auth "basic_auth")) }}
{{- fail "config.remediation.enabled needs credentials: set webhookAuth.bearerToken, webhookAuth.basicAuth or webhookAuth.existingSecret" }}
{{- end }}
{{- $_ := set $rem "auth" $auth }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
Threshold formatting for the PrometheusRule, matching alerts/render.py: promNumber = `_num` (integers
without a decimal point, other numbers in shortest form), promPercent = `_pct` (0.15 -> 15%), promBytes =
`_bytes` (5368709120 -> 5GiB). Strings pass through unchanged.
*/}}
{{- define "docker-image-exporter.promNumber" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else if eq (float64 .) (floor .) }}{{ int64 . }}
{{- else }}{{ toString (float64 .) }}
{{- end }}
{{- end }}

{{- define "docker-image-exporter.promPercent" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else }}{{ printf "%.6g%%" (mulf . 100) }}
{{- end }}
{{- end }}

{{- define "docker-image-exporter.promBytes" -}}
{{- if kindIs "string" . }}{{ . }}
{{- else }}
{{- $v := float64 . }}
{{- if ge $v 1099511627776.0 }}{{ printf "%.6gTiB" (divf $v 1099511627776) }}
{{- else if ge $v 1073741824.0 }}{{ printf "%.6gGiB" (divf $v 1073741824) }}
{{- else if ge $v 1048576.0 }}{{ printf "%.6gMiB" (divf $v 1048576) }}
{{- else if ge $v 1024.0 }}{{ printf "%.6gKiB" (divf $v 1024) }}
{{- else }}{{ printf "%.6gB" $v }}
{{- end }}
{{- end }}
{{- end }}
