/**
 * Pod and namespace objects for the fake API server, shaped like what a real cluster stores (labels, an owner,
 * a container with env, ports, probes and resources, volumes, conditions, container statuses), so that "bytes
 * received" means something. About 2.3 KB of JSON each.
 */
export interface BenchPod {
  namespace: string;
  name: string;
  ip: string;
  node: string;
  role?: string;
  /** Extra labels (churn changes one). */
  labels?: Record<string, string>;
}

export const ROLE_ANNOTATION = 'iam.amazonaws.com/role';
export const PERMITTED_ANNOTATION = 'iam.amazonaws.com/permitted';

export function podObject(p: BenchPod): Record<string, unknown> {
  const app = p.name.replace(/-[a-z0-9]+-[a-z0-9]+$/, '') || p.name;
  const created = '2026-01-01T00:00:00Z';
  return {
    apiVersion: 'v1',
    kind: 'Pod',
    metadata: {
      name: p.name,
      namespace: p.namespace,
      labels: { app, 'app.kubernetes.io/name': app, 'pod-template-hash': '7c9d8f6b5d', ...(p.labels ?? {}) },
      annotations: {
        ...(p.role ? { [ROLE_ANNOTATION]: p.role } : {}),
        'kubectl.kubernetes.io/restartedAt': created,
        'prometheus.io/scrape': 'true',
        'prometheus.io/port': '9102',
      },
      ownerReferences: [{ apiVersion: 'apps/v1', kind: 'ReplicaSet', name: `${app}-7c9d8f6b5d`, uid: '5b0c7a58-3c9e-4d55-8a0e-0d5c8f2a9e11', controller: true, blockOwnerDeletion: true }],
    },
    spec: {
      nodeName: p.node,
      serviceAccountName: 'default',
      restartPolicy: 'Always',
      terminationGracePeriodSeconds: 30,
      dnsPolicy: 'ClusterFirst',
      containers: [
        {
          name: 'app',
          image: `registry.example.com/${p.namespace}/${app}:1.42.7`,
          ports: [{ name: 'http', containerPort: 8080, protocol: 'TCP' }, { name: 'metrics', containerPort: 9102, protocol: 'TCP' }],
          env: [
            { name: 'AWS_REGION', value: 'eu-west-1' },
            { name: 'LOG_LEVEL', value: 'info' },
            { name: 'POD_NAME', valueFrom: { fieldRef: { apiVersion: 'v1', fieldPath: 'metadata.name' } } },
          ],
          resources: { requests: { cpu: '100m', memory: '128Mi' }, limits: { memory: '256Mi' } },
          readinessProbe: { httpGet: { path: '/ready', port: 'http', scheme: 'HTTP' }, periodSeconds: 10, timeoutSeconds: 1, successThreshold: 1, failureThreshold: 3 },
          volumeMounts: [{ name: 'kube-api-access', mountPath: '/var/run/secrets/kubernetes.io/serviceaccount', readOnly: true }],
          terminationMessagePath: '/dev/termination-log',
          terminationMessagePolicy: 'File',
          imagePullPolicy: 'IfNotPresent',
        },
      ],
      volumes: [
        {
          name: 'kube-api-access',
          projected: {
            defaultMode: 420,
            sources: [
              { serviceAccountToken: { expirationSeconds: 3607, path: 'token' } },
              { configMap: { name: 'kube-root-ca.crt', items: [{ key: 'ca.crt', path: 'ca.crt' }] } },
            ],
          },
        },
      ],
      tolerations: [
        { key: 'node.kubernetes.io/not-ready', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 },
        { key: 'node.kubernetes.io/unreachable', operator: 'Exists', effect: 'NoExecute', tolerationSeconds: 300 },
      ],
    },
    status: {
      phase: 'Running',
      hostIP: '10.0.0.1',
      podIP: p.ip,
      podIPs: [{ ip: p.ip }],
      startTime: created,
      qosClass: 'Burstable',
      conditions: ['Initialized', 'Ready', 'ContainersReady', 'PodScheduled'].map((type) => ({ type, status: 'True', lastProbeTime: null, lastTransitionTime: created })),
      containerStatuses: [
        {
          name: 'app',
          ready: true,
          started: true,
          restartCount: 0,
          image: `registry.example.com/${p.namespace}/${app}:1.42.7`,
          imageID: `registry.example.com/${p.namespace}/${app}@sha256:${'0'.repeat(64)}`,
          containerID: `containerd://${'1'.repeat(64)}`,
          state: { running: { startedAt: created } },
        },
      ],
    },
  };
}
