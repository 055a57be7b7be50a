// Package kubernetes holds nbsecrets' Kubernetes manifests and Helm values
// (YAML files beside this one) and the test that decodes each of them
// strictly into the k8s.io/api types, so that a misspelt field fails the
// build, and checks the deployment's invariants: the agent runs beside the
// notebook as the notebook's user, shares the Jupyter runtime dir through
// an emptyDir, never shares the process namespace, may reach NATS through
// the user network policy; the service runs twice; NATS is a three-node
// JetStream cluster without the 1,000-consumer cap.
package kubernetes

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"sigs.k8s.io/yaml"
)

// strict decodes JSON-able v (a YAML subtree) into out, refusing unknown
// fields.
func strict(t *testing.T, what string, v any, out any) {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(out); err != nil {
		t.Fatalf("%s does not decode strictly: %v", what, err)
	}
}

// load reads a YAML file into a generic tree.
func load(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.UnmarshalStrict(b, &m); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return m
}

// at walks a generic tree by keys.
func at(t *testing.T, m map[string]any, path ...string) any {
	t.Helper()
	var cur any = m
	for _, k := range path {
		mm, ok := cur.(map[string]any)
		if !ok {
			t.Fatalf("%s: not a map at %q", strings.Join(path, "."), k)
		}
		if cur, ok = mm[k]; !ok {
			t.Fatalf("%s: missing", strings.Join(path, "."))
		}
	}
	return cur
}

// onlyKeys fails when m has a key outside allowed: the values files are
// not typed by k8s.io/api above the containers, so a misspelt chart key is
// caught here.
func onlyKeys(t *testing.T, what string, m any, allowed ...string) {
	t.Helper()
	mm, ok := m.(map[string]any)
	if !ok {
		t.Fatalf("%s is not a map", what)
	}
	for k := range mm {
		if !slices.Contains(allowed, k) {
			t.Errorf("%s has unexpected key %q", what, k)
		}
	}
}

func arg(c corev1.Container, flag string) (string, bool) {
	for _, a := range c.Args {
		if v, ok := strings.CutPrefix(a, "--"+flag+"="); ok {
			return v, true
		}
	}
	return "", false
}

func env(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

func TestZ2JHValues(t *testing.T) {
	for _, tc := range []struct {
		file   string
		native bool
	}{{"z2jh-values.yaml", true}, {"z2jh-values-legacy.yaml", false}} {
		t.Run(tc.file, func(t *testing.T) {
			raw, err := os.ReadFile(tc.file)
			if err != nil {
				t.Fatal(err)
			}
			if bytes.Contains(raw, []byte("shareProcessNamespace")) {
				t.Fatal("the agent must not share the notebook's process namespace")
			}
			v := load(t, tc.file)
			onlyKeys(t, "top level", v, "singleuser")
			su := at(t, v, "singleuser")
			onlyKeys(t, "singleuser", su, "uid", "fsGid", "extraEnv", "storage", "initContainers", "extraContainers", "networkPolicy")
			onlyKeys(t, "singleuser.storage", at(t, v, "singleuser", "storage"), "extraVolumes", "extraVolumeMounts")
			onlyKeys(t, "singleuser.networkPolicy", at(t, v, "singleuser", "networkPolicy"), "egress")

			var containers []corev1.Container
			key := "extraContainers"
			if tc.native {
				key = "initContainers"
			}
			strict(t, "singleuser."+key, at(t, v, "singleuser", key), &containers)
			if len(containers) != 1 || containers[0].Name != "nbsecrets-agent" {
				t.Fatalf("want the agent alone in %s, got %d containers", key, len(containers))
			}
			agent := containers[0]
			if tc.native {
				if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
					t.Error("a native sidecar needs restartPolicy: Always")
				}
				if agent.StartupProbe == nil {
					t.Error("the notebook should start once the agent answers: no startupProbe")
				}
			} else {
				if agent.RestartPolicy != nil {
					t.Error("a regular container takes no restartPolicy")
				}
				if agent.ReadinessProbe == nil {
					t.Error("KubeSpawner waits for every regular container to be ready: no readinessProbe")
				}
			}
			var volumes []corev1.Volume
			var mounts []corev1.VolumeMount
			strict(t, "singleuser.storage.extraVolumes", at(t, v, "singleuser", "storage", "extraVolumes"), &volumes)
			strict(t, "singleuser.storage.extraVolumeMounts", at(t, v, "singleuser", "storage", "extraVolumeMounts"), &mounts)
			var egress []networkingv1.NetworkPolicyEgressRule
			strict(t, "singleuser.networkPolicy.egress", at(t, v, "singleuser", "networkPolicy", "egress"), &egress)
			extraEnv := map[string]string{}
			strict(t, "singleuser.extraEnv", at(t, v, "singleuser", "extraEnv"), &extraEnv)

			// Same uid as the notebook, and no way up from there.
			uid := at(t, v, "singleuser", "uid").(float64)
			sc := agent.SecurityContext
			if sc == nil || sc.RunAsUser == nil || float64(*sc.RunAsUser) != uid {
				t.Errorf("the agent must run as the notebook's uid %v", uid)
			}
			if sc == nil || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
				t.Error("the agent must run as non-root without privilege escalation")
			}

			// One runtime dir, an emptyDir, at the same path in both
			// containers and in JUPYTER_RUNTIME_DIR.
			runtimeDir := extraEnv["JUPYTER_RUNTIME_DIR"]
			if runtimeDir == "" || env(agent, "JUPYTER_RUNTIME_DIR") != runtimeDir {
				t.Fatalf("JUPYTER_RUNTIME_DIR: notebook %q, agent %q", runtimeDir, env(agent, "JUPYTER_RUNTIME_DIR"))
			}
			if d, _ := arg(agent, "runtime-dir"); d != runtimeDir {
				t.Errorf("agent --runtime-dir %q, JUPYTER_RUNTIME_DIR %q", d, runtimeDir)
			}
			if s, _ := arg(agent, "socket"); s != extraEnv["NBSECRETS_SOCKET"] || !strings.HasPrefix(s, runtimeDir+"/") {
				t.Errorf("agent --socket %q must be the notebook's NBSECRETS_SOCKET %q, in the runtime dir", s, extraEnv["NBSECRETS_SOCKET"])
			}
			mountOf := func(ms []corev1.VolumeMount, path string) string {
				for _, m := range ms {
					if m.MountPath == path {
						return m.Name
					}
				}
				return ""
			}
			vol := mountOf(mounts, runtimeDir)
			if vol == "" || mountOf(agent.VolumeMounts, runtimeDir) != vol {
				t.Fatalf("runtime dir %s not mounted from the same volume in both containers", runtimeDir)
			}
			for _, m := range agent.VolumeMounts {
				i := slices.IndexFunc(volumes, func(v corev1.Volume) bool { return v.Name == m.Name })
				if i < 0 {
					t.Errorf("agent mounts volume %q that the pod does not have", m.Name)
					continue
				}
				if m.Name == vol && volumes[i].EmptyDir == nil {
					t.Errorf("the runtime dir volume %q must be an emptyDir", vol)
				}
			}
			for _, flag := range []string{"nats", "workspace", "workspace-key", "service-key", "service-curve-key", "nkey"} {
				if _, ok := arg(agent, flag); !ok {
					t.Errorf("agent has no --%s", flag)
				}
			}
			if ws, _ := arg(agent, "workspace"); ws != "{username}" {
				t.Errorf("agent --workspace %q: KubeSpawner expands {username}", ws)
			}

			// The user network policy lets the pod reach NATS.
			natsURL, _ := arg(agent, "nats")
			reaches := false
			for _, r := range egress {
				for _, p := range r.Ports {
					if p.Port != nil && p.Port.IntValue() == 4222 && len(r.To) > 0 {
						reaches = true
					}
				}
			}
			if !reaches || !strings.HasSuffix(natsURL, ":4222") {
				t.Errorf("no egress rule to NATS on 4222 (agent dials %q)", natsURL)
			}
		})
	}
}

func TestServiceManifest(t *testing.T) {
	raw, err := os.ReadFile("service.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var dep *appsv1.Deployment
	var svc *corev1.Service
	var pdb *policyv1.PodDisruptionBudget
	for i, doc := range strings.Split(string(raw), "\n---\n") {
		var head struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &head); err != nil {
			t.Fatal(err)
		}
		var out any
		switch head.Kind {
		case "Deployment":
			dep = &appsv1.Deployment{}
			out = dep
		case "Service":
			svc = &corev1.Service{}
			out = svc
		case "PodDisruptionBudget":
			pdb = &policyv1.PodDisruptionBudget{}
			out = pdb
		default:
			t.Fatalf("document %d: unexpected kind %q", i+1, head.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), out); err != nil {
			t.Fatalf("document %d (%s) does not decode strictly: %v", i+1, head.Kind, err)
		}
	}
	if dep == nil || svc == nil || pdb == nil {
		t.Fatal("want a Deployment, a Service and a PodDisruptionBudget")
	}
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 2 {
		t.Error("the service runs as two replicas")
	}
	labels := dep.Spec.Template.Labels
	for k, v := range dep.Spec.Selector.MatchLabels {
		if labels[k] != v {
			t.Errorf("the Deployment's selector %s=%s does not match its pods", k, v)
		}
	}
	for k, v := range svc.Spec.Selector {
		if labels[k] != v {
			t.Errorf("the Service's selector %s=%s does not match the pods", k, v)
		}
	}
	if dep.Spec.Template.Spec.ShareProcessNamespace != nil && *dep.Spec.Template.Spec.ShareProcessNamespace {
		t.Error("shareProcessNamespace")
	}
	c := dep.Spec.Template.Spec.Containers[0]
	if c.Args[0] != "serve" {
		t.Errorf("container runs %q, not serve", c.Args[0])
	}
	if r, _ := arg(c, "bucket-replicas"); r != "3" {
		t.Errorf("--bucket-replicas %q: the buckets want three copies on a three-node cluster", r)
	}
	for _, p := range svc.Spec.Ports {
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == p.TargetPort.String() }) {
			t.Errorf("Service port %s targets %q, which the container does not name", p.Name, p.TargetPort.String())
		}
	}
	if sc := c.SecurityContext; sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Error("the service container should have a read-only root filesystem")
	}
	// Every port the container names is one serve listens on: --health-addr
	// is its only listener.
	health, _ := arg(c, "health-addr")
	for _, p := range c.Ports {
		if !strings.HasSuffix(health, fmt.Sprintf(":%d", p.ContainerPort)) {
			t.Errorf("container port %s (%d): serve listens only on --health-addr %q", p.Name, p.ContainerPort, health)
		}
	}
	for name, probe := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			t.Errorf("no HTTP %s probe", name)
			continue
		}
		if !slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool { return cp.Name == probe.HTTPGet.Port.String() }) {
			t.Errorf("the %s probe targets port %q, which the container does not name", name, probe.HTTPGet.Port.String())
		}
	}
	if c.ReadinessProbe != nil && c.ReadinessProbe.HTTPGet != nil && c.ReadinessProbe.HTTPGet.Path != "/readyz" {
		t.Errorf("readiness probe path %q, want /readyz", c.ReadinessProbe.HTTPGet.Path)
	}
}

func TestNATSValues(t *testing.T) {
	v := load(t, "nats-values.yaml")
	if at(t, v, "config", "cluster", "enabled") != true || at(t, v, "config", "cluster", "replicas") != float64(3) {
		t.Error("want a three-node cluster")
	}
	if at(t, v, "config", "jetstream", "enabled") != true {
		t.Error("JetStream is off")
	}
	if got := at(t, v, "config", "jetstream", "merge", "limits", "default_max_consumers"); got != float64(-1) {
		t.Errorf("default_max_consumers = %v: the 1,001st agent would fail", got)
	}
	include := at(t, v, "config", "merge", "$include").(string)
	type patch struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	var cp, sp []patch
	strict(t, "container.patch", at(t, v, "container", "patch"), &cp)
	strict(t, "statefulSet.patch", at(t, v, "statefulSet", "patch"), &sp)
	var mount corev1.VolumeMount
	var vol corev1.Volume
	strict(t, "container.patch[0].value", cp[0].Value, &mount)
	strict(t, "statefulSet.patch[0].value", sp[0].Value, &vol)
	if cp[0].Path != "/volumeMounts/-" || sp[0].Path != "/spec/template/spec/volumes/-" {
		t.Errorf("patches add at %s and %s", cp[0].Path, sp[0].Path)
	}
	if mount.Name != vol.Name || vol.Secret == nil {
		t.Errorf("the auth include is mounted from %q, the volume is %q", mount.Name, vol.Name)
	}
	// The chart's config lives in /etc/nats-config; the include is relative.
	want := fmt.Sprintf("./%s/", strings.TrimPrefix(mount.MountPath, "/etc/nats-config/"))
	if !strings.HasPrefix(include, want) {
		t.Errorf("$include %q is not under the mounted %s", include, mount.MountPath)
	}
}

func TestDockerfileAndUnits(t *testing.T) {
	df, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(df, []byte("CGO_ENABLED=0")) || !bytes.Contains(df, []byte("FROM gcr.io/distroless/static")) {
		t.Error("the image should be a static binary on a minimal base")
	}
	for _, unit := range []string{"../systemd/nbsecrets-nats.service", "../systemd/nbsecrets-serve.service"} {
		b, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"[Unit]", "[Service]", "[Install]", "ExecStart=", "NoNewPrivileges=yes"} {
			if !bytes.Contains(b, []byte(want)) {
				t.Errorf("%s has no %s", unit, want)
			}
		}
	}
	nats, _ := os.ReadFile("../systemd/nbsecrets-nats.service")
	if !bytes.Contains(nats, []byte("default_max_consumers: -1")) {
		t.Error("the single-VM NATS configuration should lift the consumer cap")
	}
}
