/**
 * Just enough of Kubernetes' protobuf encoding for the fake API server to accept what kubectl's typed
 * clients send (`kubectl create namespace|serviceaccount|secret`, `kubectl run`): the `k8s\0` envelope
 * (runtime.Unknown) holding a v1 Namespace, Pod, ServiceAccount (metadata only) or Secret (data, stringData, type),
 * decoded to the JSON shape. Fields we do not know are skipped.
 * Field numbers from k8s.io/api/core/v1/generated.proto and apimachinery's meta/v1 and runtime protos.
 */

type Obj = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Field = { no: number; wire: number; value: bigint | Buffer };

const MAGIC = Buffer.from([0x6b, 0x38, 0x73, 0x00]); // "k8s\0"

function varint(buf: Buffer, pos: number): [bigint, number] {
  let result = 0n;
  let shift = 0n;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++]!;
    result |= BigInt(b & 0x7f) << shift;
    if ((b & 0x80) === 0) return [result, pos];
    shift += 7n;
    if (shift > 63n) throw new Error('varint too long');
  }
}

function fields(buf: Buffer): Field[] {
  const out: Field[] = [];
  let pos = 0;
  while (pos < buf.length) {
    const [tag, p1] = varint(buf, pos);
    pos = p1;
    const no = Number(tag >> 3n);
    const wire = Number(tag & 7n);
    if (wire === 0) {
      const [v, p2] = varint(buf, pos);
      out.push({ no, wire, value: v });
      pos = p2;
    } else if (wire === 2) {
      const [len, p2] = varint(buf, pos);
      const end = p2 + Number(len);
      if (end > buf.length) throw new Error('truncated field');
      out.push({ no, wire, value: buf.subarray(p2, end) });
      pos = end;
    } else if (wire === 1) {
      pos += 8;
    } else if (wire === 5) {
      pos += 4;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
  return out;
}

const str = (f: Field) => (f.value as Buffer).toString('utf8');
const bytes = (f: Field) => f.value as Buffer;

function stringMap(list: Field[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const f of list) {
    let k = '';
    let v = '';
    for (const e of fields(bytes(f))) {
      if (e.no === 1) k = str(e);
      else if (e.no === 2) v = str(e);
    }
    out[k] = v;
  }
  return out;
}

/** One entry of a protobuf map field: [key, value bytes]. */
function mapEntry(buf: Buffer): [string, Buffer] {
  let k = '';
  let v: Buffer = Buffer.alloc(0);
  for (const e of fields(buf)) {
    if (e.no === 1 && e.wire === 2) k = str(e);
    else if (e.no === 2 && e.wire === 2) v = bytes(e);
  }
  return [k, v];
}

function objectMeta(buf: Buffer): Obj {
  const meta: Obj = {};
  const labels: Field[] = [];
  const annotations: Field[] = [];
  for (const f of fields(buf)) {
    if (f.wire !== 2) continue;
    if (f.no === 1) meta.name = str(f);
    else if (f.no === 2) meta.generateName = str(f);
    else if (f.no === 3) meta.namespace = str(f);
    else if (f.no === 11) labels.push(f);
    else if (f.no === 12) annotations.push(f);
  }
  if (labels.length) meta.labels = stringMap(labels);
  if (annotations.length) meta.annotations = stringMap(annotations);
  return meta;
}

function container(buf: Buffer): Obj {
  const c: Obj = {};
  for (const f of fields(buf)) {
    if (f.wire === 2 && f.no === 1) c.name = str(f);
    else if (f.wire === 2 && f.no === 2) c.image = str(f);
  }
  return c;
}

function podSpec(buf: Buffer): Obj {
  const spec: Obj = {};
  const containers: Obj[] = [];
  for (const f of fields(buf)) {
    if (f.no === 2 && f.wire === 2) containers.push(container(bytes(f)));
    else if (f.no === 3 && f.wire === 2) spec.restartPolicy = str(f);
    else if (f.no === 8 && f.wire === 2) spec.serviceAccountName = str(f);
    else if (f.no === 10 && f.wire === 2) spec.nodeName = str(f);
    else if (f.no === 11 && f.wire === 0) spec.hostNetwork = f.value !== 0n;
  }
  spec.containers = containers;
  return spec;
}

function podStatus(buf: Buffer): Obj {
  const status: Obj = {};
  for (const f of fields(buf)) {
    if (f.wire !== 2) continue;
    if (f.no === 1) status.phase = str(f);
    else if (f.no === 6) status.podIP = str(f);
  }
  return status;
}

/** Decode a `k8s\0`-enveloped v1 Pod, Namespace, ServiceAccount or Secret to its JSON shape; throws on anything else. */
export function decodeKubeProtobuf(body: Buffer): Obj {
  if (body.length < 4 || !body.subarray(0, 4).equals(MAGIC)) throw new Error('not a Kubernetes protobuf message');
  let apiVersion = '';
  let kind = '';
  let raw: Buffer | undefined;
  for (const f of fields(body.subarray(4))) {
    if (f.no === 1 && f.wire === 2) {
      for (const t of fields(bytes(f))) {
        if (t.no === 1) apiVersion = str(t);
        else if (t.no === 2) kind = str(t);
      }
    } else if (f.no === 2 && f.wire === 2) raw = bytes(f);
  }
  if (!raw) throw new Error('protobuf envelope without raw object');
  const obj: Obj = { apiVersion, kind };
  for (const f of fields(raw)) {
    if (f.wire !== 2) continue;
    if (f.no === 1) obj.metadata = objectMeta(bytes(f));
    else if (kind === 'Pod' && f.no === 2) obj.spec = podSpec(bytes(f));
    else if (kind === 'Pod' && f.no === 3) obj.status = podStatus(bytes(f));
    else if (kind === 'Secret' && f.no === 2) (obj.data ??= {} as Obj)[mapEntry(bytes(f))[0]] = mapEntry(bytes(f))[1].toString('base64');
    else if (kind === 'Secret' && f.no === 3) obj.type = str(f);
    else if (kind === 'Secret' && f.no === 4) (obj.stringData ??= {} as Obj)[mapEntry(bytes(f))[0]] = mapEntry(bytes(f))[1].toString('utf8');
  }
  if (kind !== 'Pod' && kind !== 'Namespace' && kind !== 'ServiceAccount' && kind !== 'Secret') throw new Error(`protobuf decoding of ${apiVersion}/${kind} is not supported`);
  return obj;
}
