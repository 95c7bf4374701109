/**
 * The command-line flags of uswitch/kiam (agent and server, v3/v4) and jtblin/kube2iam, so that their DaemonSet
 * manifests keep working: each peer flag is rewritten to our own flag(s) with the same meaning, accepted and ignored
 * with a start-up warning when it has no meaning here, or refused (exit 2) when ignoring it would be unsafe or
 * surprising. The rewrite happens on argv before commander parses it, so our flags, their validation and their
 * error messages stay the only ones; none of the peer names shows in `--help` (docs/migrate-from-*.md list them).
 *
 * Flag sets read from the peers' sources: kiam cmd/kiam/{agent,server,opts}.go (kingpin: `--flag value`,
 * `--flag=value`, booleans `--flag` / `--no-flag`), kube2iam cmd/main.go (pflag: booleans `--flag` / `--flag=true`).
 */
import { DEFAULTS, parseDuration } from './config.ts';

export type Peer = 'kiam' | 'kube2iam';

/** How our own agent flags parse: by long name, whether it takes a value. Built from the commander definitions. */
export type NativeFlags = ReadonlyMap<string, { takesValue: boolean }>;

export interface PeerTranslation {
  /** argv with every peer flag rewritten; unchanged when there was none. */
  argv: string[];
  /** To be logged at `warn` when the agent starts. */
  warnings: string[];
  /** Each names the flag at fault; any error means exit 2. */
  errors: string[];
}

interface State {
  out: string[];
  /** Appended after everything else, so they win over earlier values (kube2iam's --verbose beats --log-level). */
  late: string[];
  warnings: string[];
  errors: string[];
  peers: Set<Peer>;
  seen: Set<string>;
}

interface Alias {
  peer: Peer;
  /** 'value': `--flag value` or `--flag=value`; 'bool': `--flag`, `--flag=<bool>` or `--no-flag`. */
  takes: 'value' | 'bool';
  /** value is the string given, or 'true' / 'false' for a boolean. */
  apply(value: string, flag: string, st: State): void;
}

const KIAM_SERVER_GONE = 'there is no kiam server any more: the agent watches the API server and calls STS itself';

const rename = (peer: Peer, to: string, convert: (v: string) => string = (v) => v): Alias => ({
  peer,
  takes: 'value',
  apply: (v, _flag, st) => void st.out.push(to, convert(v)),
});
/** A boolean peer flag that turns one of ours on; false leaves our default (off). */
const switchOn = (peer: Peer, to: string): Alias => ({
  peer,
  takes: 'bool',
  apply: (v, _flag, st) => void (v === 'true' && st.out.push(to)),
});
const ignore = (peer: Peer, takes: 'value' | 'bool', why: string): Alias => ({
  peer,
  takes,
  apply: (v, flag, st) => void ((takes === 'value' || v === 'true') && st.warnings.push(`${flag} is ignored: ${why}`)),
});
/** Refused when set (to true, for a boolean); a boolean set to false is harmless and dropped. */
const reject = (peer: Peer, takes: 'value' | 'bool', why: string): Alias => ({
  peer,
  takes,
  apply: (v, flag, st) => void ((takes === 'value' || v === 'true') && st.errors.push(`${flag} is not supported: ${why}`)),
});
/** An annotation-key flag: its peer's default key is what we read anyway; any other key is refused. */
const annotationKey = (peer: Peer, standard: string, what: string): Alias => ({
  peer,
  takes: 'value',
  apply: (v, flag, st) =>
    void (v !== standard && st.errors.push(`${flag} "${v}" is not supported: kiam reads ${what} from the annotation ${standard} only`)),
});

const ALIASES: Readonly<Record<string, Alias>> = {
  // ── uswitch/kiam agent ──
  '--host': rename('kiam', '--host-ip'),
  '--level': rename('kiam', '--log-level'),
  '--json-log': {
    peer: 'kiam',
    takes: 'bool',
    apply: (v, flag, st) => {
      if (v === 'true') st.out.push('--log-format', 'json');
      else st.warnings.push(`${flag}=false (kiam's text logs) is ignored: kiam logs JSON (or --log-format pretty)`);
    },
  },
  '--iptables-remove': switchOn('kiam', '--remove-rules-on-exit'),
  '--allow-ip-query': reject('kiam', 'bool', "a pod could name another pod's IP and get its role; identity comes from the connection's source address only"),
  '--prometheus-listen-addr': {
    peer: 'kiam',
    takes: 'value',
    apply: (v, flag, st) => {
      const m = /^(.*):(\d{1,5})$/.exec(v);
      if (!m) return void st.errors.push(`${flag} "${v}" is not host:port (e.g. 0.0.0.0:9620); use --metrics-port`);
      st.out.push('--metrics-port', m[2]!);
      const host = m[1]!.replace(/^\[|\]$/g, '');
      if (host !== '' && host !== '0.0.0.0' && host !== '::') {
        st.warnings.push(`${flag}: the host part "${m[1]}" is ignored: /metrics, /healthz and /readyz listen on all addresses, port ${m[2]}`);
      }
    },
  },
  '--prometheus-sync-interval': ignore('kiam', 'value', 'metrics are always current'),
  '--pprof-listen-addr': ignore('kiam', 'value', 'there is no pprof endpoint'),
  '--statsd': ignore('kiam', 'value', 'there are no StatsD metrics; scrape /metrics on --metrics-port'),
  '--statsd-prefix': ignore('kiam', 'value', 'there are no StatsD metrics'),
  '--statsd-interval': ignore('kiam', 'value', 'there are no StatsD metrics'),
  '--cert': ignore('kiam', 'value', `${KIAM_SERVER_GONE}, so no TLS certificates are needed`),
  '--key': ignore('kiam', 'value', `${KIAM_SERVER_GONE}, so no TLS certificates are needed`),
  '--ca': ignore('kiam', 'value', `${KIAM_SERVER_GONE}, so no TLS certificates are needed`),
  '--server-address': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--server-address-refresh': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--gateway-timeout-creation': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--grpc-keepalive-time-duration': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--grpc-keepalive-timeout-duration': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--grpc-keepalive-permit-without-stream': ignore('kiam', 'bool', KIAM_SERVER_GONE),
  '--grpc-keepalive-time-ms': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--grpc-keepalive-timeout-ms': ignore('kiam', 'value', KIAM_SERVER_GONE),
  // ── uswitch/kiam server (its settings now belong to the agent; same-named ones need nothing) ──
  '--session': rename('kiam', '--session-name', (v) => `kiam-${v}`),
  '--session-refresh': ignore('kiam', 'value', 'credentials are refreshed before half the session has passed (jittered), while a pod still uses them'),
  '--fetchers': ignore('kiam', 'value', 'credentials are prefetched as pods appear, one STS call per identity'),
  '--prefetch-buffer-size': ignore('kiam', 'value', 'credentials are prefetched as pods appear, one STS call per identity'),
  '--sync': ignore('kiam', 'value', 'the pod watch has no resync period'),
  '--bind': ignore('kiam', 'value', KIAM_SERVER_GONE),
  '--role-alias': reject('kiam', 'value', 'annotate pods with the role name itself'),

  // ── jtblin/kube2iam ──
  '--app-port': rename('kube2iam', '--port'),
  '--node': rename('kube2iam', '--node-name'),
  '--base-role-arn': rename('kube2iam', '--role-base-arn', (v) => (/:role$/.test(v) ? `${v}/` : v)),
  '--auto-discover-base-arn': switchOn('kube2iam', '--role-base-arn-autodetect'),
  '--auto-discover-default-role': reject(
    'kube2iam',
    'bool',
    "it hands every pod without the annotation the node's own role; give such pods a dedicated role with --default-role <role>",
  ),
  '--iam-role-session-ttl': {
    peer: 'kube2iam',
    takes: 'value',
    apply: (v, flag, st) => {
      const ms = parseDuration(v); // Go durations: 15m, 15m0s, 1h30m
      // kube2iam asks STS for sessions of twice the TTL and caches them for the TTL.
      const sessionS = Math.floor((2 * ms) / 1000);
      if (!(sessionS >= 15 * 60 && sessionS <= 12 * 3600)) {
        return void st.errors.push(
          `${flag} "${v}": kube2iam asked STS for sessions of twice this TTL; kiam needs sessions of 15m to 12h (TTL 7m30s to 6h), or give --session-duration`,
        );
      }
      st.out.push('--session-duration', `${sessionS}s`);
    },
  },
  '--iam-role-error-ttl': ignore('kube2iam', 'value', 'STS failures are remembered with their own backoff'),
  '--namespace-restrictions': {
    peer: 'kube2iam',
    takes: 'bool',
    apply: (v, flag, st) => {
      if (v === 'true') return void st.out.push('--namespace-restriction');
      st.out.push('--no-namespace-restriction');
      st.warnings.push(`${flag}=false: namespace restriction is OFF, any pod may take any role the agent can assume`);
    },
  },
  '--namespace-key': annotationKey('kube2iam', 'iam.amazonaws.com/allowed-roles', 'the roles a namespace allows'),
  '--iam-role-key': annotationKey('kube2iam', 'iam.amazonaws.com/role', "a pod's role"),
  '--iam-external-id': annotationKey('kube2iam', 'iam.amazonaws.com/external-id', "a pod's external ID"),
  '--iam-role-session-name-key': ignore('kube2iam', 'value', 'session names come from the --session-name template ({namespace}.{pod} by default), not from a pod annotation'),
  '--iam-enable-pod-identity-tags': reject('kube2iam', 'bool', 'STS session tags are not set; IAM policies that test them would deny'),
  '--eks-cluster-arn': ignore('kube2iam', 'value', 'only used for session tags, which are not set'),
  '--eks-cluster-name': ignore('kube2iam', 'value', 'only used for session tags, which are not set'),
  '--metadata-addr': rename('kube2iam', '--metadata-endpoint', (v) => (/^[a-z]+:\/\//i.test(v) ? v : `http://${v}`)),
  '--verbose': {
    peer: 'kube2iam',
    takes: 'bool',
    apply: (v, _flag, st) => void (v === 'true' && st.late.push('--log-level', 'debug')),
  },
  '--debug': ignore('kube2iam', 'bool', 'there is no /debug/store; `kiam doctor` shows what the agent sees'),
  '--insecure': reject('kube2iam', 'bool', "the API server's certificate is always verified; give a kubeconfig with its CA (--kubeconfig)"),
  '--api-server': reject('kube2iam', 'value', 'the API server comes from the in-cluster service account or --kubeconfig'),
  '--api-token': reject('kube2iam', 'value', 'the API credentials come from the in-cluster service account or --kubeconfig'),
  '--backoff-max-interval': ignore('kube2iam', 'value', 'a request from an unknown IP waits up to --pod-wait-timeout for the watch, then looks the pod up once'),
  '--backoff-max-elapsed-time': ignore('kube2iam', 'value', 'a request from an unknown IP waits up to --pod-wait-timeout for the watch, then looks the pod up once'),
  '--cache-resync-period': ignore('kube2iam', 'value', 'the pod watch has no resync period'),
  '--cache-sync-attempts': ignore('kube2iam', 'value', 'the agent waits for the watches to sync, retrying with backoff'),
  '--healthcheck-interval': ignore('kube2iam', 'value', 'readiness (/readyz on --metrics-port) is computed on each request'),
  '--resolve-duplicate-cache-ips': ignore('kube2iam', 'bool', 'two live pods on one IP get nothing (fail closed); an IP the watch has not seen is looked up once'),
  '--use-regional-sts-endpoint': ignore('kube2iam', 'bool', 'the regional STS endpoint of --region is always used'),
  // Both peers: kiam server and newer kube2iam.
  '--assume-role-arn': {
    peer: 'kiam',
    takes: 'value',
    apply: (_v, flag, st) =>
      void st.errors.push(`${flag} is not supported: give the agent the identity that calls STS through the AWS SDK's default chain (IRSA, or the node's instance profile)`),
  },
};

const TRUE = new Set(['true', 't', '1', 'yes']);
const FALSE = new Set(['false', 'f', '0', 'no']);

/** The long option names peers use that we translate (for tests and the guides). */
export const PEER_FLAGS: ReadonlyMap<string, Peer> = new Map(Object.entries(ALIASES).map(([flag, a]) => [flag, a.peer]));

/**
 * Rewrite a `kiam` argv. Only the agent's flags are translated: after an explicit `agent`, or from the start when
 * the first word is a flag the agent (or a peer) knows, as in a kube2iam manifest that passes flags only.
 */
export function translatePeerArgs(argv: readonly string[], native: NativeFlags): PeerTranslation {
  const first = argv[0] ?? '';
  let rest: readonly string[];
  if (first === 'agent') rest = argv.slice(1);
  else if (first.startsWith('--') && knownFlag(first, native)) rest = argv;
  else return { argv: [...argv], warnings: [], errors: [] };

  const st: State = { out: [], late: [], warnings: [], errors: [], peers: new Set(), seen: new Set() };
  let metricsPort: { at: number; value: string } | undefined;
  let port: string | undefined;

  for (let i = 0; i < rest.length; i++) {
    const token = rest[i]!;
    if (token === '--') {
      st.out.push(...rest.slice(i));
      break;
    }
    if (!token.startsWith('--')) {
      st.out.push(token);
      continue;
    }
    const eq = token.indexOf('=');
    const name = eq < 0 ? token : token.slice(0, eq);
    const inline = eq < 0 ? undefined : token.slice(eq + 1);

    const nativeFlag = native.get(name);
    if (nativeFlag) {
      st.seen.add(name);
      if (!nativeFlag.takesValue) {
        // pflag style `--iptables=true` for one of our booleans.
        if (inline === undefined) st.out.push(name);
        else if (TRUE.has(inline.toLowerCase())) st.out.push(name);
        else if (FALSE.has(inline.toLowerCase())) {
          const negated = name.startsWith('--no-') ? `--${name.slice(5)}` : `--no-${name.slice(2)}`;
          if (native.has(negated)) st.out.push(negated);
        } else st.errors.push(`${name}: "${inline}" is not true or false`);
        continue;
      }
      let value = inline;
      if (value === undefined) {
        if (i + 1 >= rest.length) {
          st.out.push(token); // commander reports the missing value
          continue;
        }
        value = rest[++i]!;
      }
      value = peerValue(name, value, st);
      if (name === '--metrics-port') metricsPort = { at: st.out.length, value };
      if (name === '--port') port = value;
      st.out.push(name, value);
      continue;
    }

    const negated = name.startsWith('--no-') ? ALIASES[`--${name.slice(5)}`] : undefined;
    const alias = ALIASES[name] ?? (negated?.takes === 'bool' ? negated : undefined);
    if (!alias) {
      st.out.push(token); // unknown: commander names it
      continue;
    }
    const flag = alias === negated ? `--${name.slice(5)}` : name;
    st.peers.add(alias.peer);
    st.seen.add(flag);
    let value: string;
    if (alias.takes === 'bool') {
      if (alias === negated) {
        if (inline !== undefined) {
          st.errors.push(`${name} takes no value`);
          continue;
        }
        value = 'false';
      } else if (inline === undefined || TRUE.has(inline.toLowerCase())) value = 'true';
      else if (FALSE.has(inline.toLowerCase())) value = 'false';
      else {
        st.errors.push(`${name}: "${inline}" is not true or false`);
        continue;
      }
    } else if (inline !== undefined) value = inline;
    else if (i + 1 < rest.length) value = rest[++i]!;
    else {
      st.errors.push(`${name} needs a value`);
      continue;
    }
    if (name === '--app-port') port = value;
    alias.apply(value, flag, st);
  }

  // kube2iam serves /metrics on its app port unless told otherwise (and its Helm chart says so explicitly). Ours
  // never do: the metadata port is what pods reach through the DNAT.
  if (st.peers.has('kube2iam') && metricsPort && metricsPort.value === (port ?? DEFAULTS.port)) {
    st.out.splice(metricsPort.at, 2);
    st.warnings.push(
      `--metrics-port ${metricsPort.value} is the metadata port: metrics, /healthz and /readyz are never served where pods can reach them; using the default metrics port 9620`,
    );
  }
  if (st.peers.has('kube2iam') && !st.seen.has('--namespace-restrictions') && !st.seen.has('--namespace-restriction') && !st.seen.has('--no-namespace-restriction')) {
    st.warnings.push(
      'kube2iam flags without --namespace-restrictions: kiam always applies the namespace restriction, so a pod gets its role only if its namespace permits it (annotation iam.amazonaws.com/permitted, or kube2iam\'s iam.amazonaws.com/allowed-roles); see docs/migrate-from-kube2iam.md',
    );
  }
  if (st.peers.has('kiam') && !st.seen.has('--whitelist-route-regexp') && !st.seen.has('--allow-route-regexp')) {
    st.warnings.push(
      "kiam flags without --whitelist-route-regexp: kiam blocked every other metadata path by default, kiam passes through all but user-data and identity-credentials; add --deny-route-regexp '.*' to block them all as before",
    );
  }
  return { argv: ['agent', ...st.out, ...st.late], warnings: st.warnings, errors: st.errors };
}

/** Values peers accept for flags that share our name. */
function peerValue(name: string, value: string, st: State): string {
  if (name === '--log-format' && value.toLowerCase() === 'text') {
    st.warnings.push('--log-format text is not available: logging JSON (--log-format pretty for people, where pino-pretty is installed)');
    return 'json';
  }
  if (name === '--log-level') {
    const level = value.toLowerCase();
    if (level === 'warning') return 'warn';
    if (level === 'panic') return 'fatal';
  }
  return value;
}

function knownFlag(token: string, native: NativeFlags): boolean {
  const eq = token.indexOf('=');
  const name = eq < 0 ? token : token.slice(0, eq);
  if (name === '--help' || name === '--version') return false;
  return native.has(name) || name in ALIASES || (name.startsWith('--no-') && ALIASES[`--${name.slice(5)}`]?.takes === 'bool');
}
