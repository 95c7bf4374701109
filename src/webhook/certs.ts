/**
 * The self-managed mode's certificates: a CA and a serving certificate it signs, generated with @peculiar/x509
 * on Node's WebCrypto (ECDSA P-256 keys, SHA-256 signatures), and read back with node:crypto's X509Certificate.
 * What the API server (Go's crypto/x509) needs of them: the CA marked as one (basicConstraints cA, keyUsage
 * keyCertSign), the serving certificate naming the Service's DNS name in subjectAltName (the common name is
 * ignored since Go 1.15), extKeyUsage serverAuth, and positive serial numbers (RFC 5280 §4.1.2.2).
 */
import { webcrypto, X509Certificate as NodeX509, createPrivateKey, randomBytes } from 'node:crypto';
// @peculiar/x509's dependency injection (tsyringe) needs the Reflect metadata API, which it leaves to the program
// to provide; this module is loaded by `kiam webhook` only, so the agent's globals stay untouched.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';

const ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const;
const DAY_MS = 86_400_000;
/** Valid from a little before now: a node whose clock lags ours still accepts the certificate. */
const BACKDATE_MS = 60 * 60_000;

export const CA_VALIDITY_MS = 10 * 365 * DAY_MS;
export const SERVING_VALIDITY_MS = 365 * DAY_MS;
/** Replaced once this close to expiry (the issue: within 30 days). */
export const RENEW_BEFORE_MS = 30 * DAY_MS;

export interface Pem {
  cert: string;
  key: string;
}

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

/** 16 random bytes with the top bit clear (a positive INTEGER) and a non-zero first byte (minimal encoding). */
function serialNumber(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

async function keyPem(key: webcrypto.CryptoKey): Promise<string> {
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', key));
  return x509.PemConverter.encode(pkcs8, 'PRIVATE KEY') + '\n';
}

const newKeys = () => webcrypto.subtle.generateKey(ALGORITHM, true, ['sign', 'verify']) as Promise<webcrypto.CryptoKeyPair>;

/** A new CA, valid CA_VALIDITY_MS from `now`. */
export async function createCa(now: number, commonName: string): Promise<Pem> {
  const keys = await newKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: serialNumber(),
    name: `CN=${commonName}`,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + CA_VALIDITY_MS),
    signingAlgorithm: ALGORITHM,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { cert: cert.toString('pem') + '\n', key: await keyPem(keys.privateKey) };
}

/** A serving certificate for `dnsNames`, signed by `ca`, valid SERVING_VALIDITY_MS from `now` but never past the CA. */
export async function createServing(now: number, ca: Pem, dnsNames: string[]): Promise<Pem> {
  const caCert = new x509.X509Certificate(ca.cert);
  const caKey = await webcrypto.subtle.importKey(
    'pkcs8',
    createPrivateKey(ca.key).export({ format: 'der', type: 'pkcs8' }),
    ALGORITHM,
    false,
    ['sign'],
  );
  const keys = await newKeys();
  const notAfter = Math.min(now + SERVING_VALIDITY_MS, caCert.notAfter.getTime());
  const cert = await x509.X509CertificateGenerator.create({
    serialNumber: serialNumber(),
    subject: `CN=${dnsNames[0]}`,
    issuer: caCert.subject,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(notAfter),
    signingAlgorithm: ALGORITHM,
    publicKey: keys.publicKey,
    signingKey: caKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(dnsNames.map((value) => ({ type: 'dns' as const, value }))),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(caCert),
    ],
  });
  return { cert: cert.toString('pem') + '\n', key: await keyPem(keys.privateKey) };
}

/** The certificates of a PEM bundle, in order (invalid blocks are skipped). */
export function parseBundle(pem: string): NodeX509[] {
  const blocks = pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? [];
  const certs: NodeX509[] = [];
  for (const b of blocks) {
    try {
      certs.push(new NodeX509(b));
    } catch {
      // not a certificate: left out
    }
  }
  return certs;
}

/**
 * Why a stored CA + serving pair must be replaced at `now`, or undefined when it is good: both parse, the CA
 * key is the CA's, the serving key the serving certificate's, the CA signed it, it names every DNS name, and
 * neither expires within RENEW_BEFORE_MS.
 */
export function renewalReason(now: number, ca: Pem | undefined, serving: Pem | undefined, dnsNames: string[]): { ca: boolean; reason: string } | undefined {
  const caCert = ca ? parseBundle(ca.cert)[0] : undefined;
  if (!ca || !caCert) return { ca: true, reason: 'no CA' };
  try {
    if (!caCert.ca || !caCert.checkPrivateKey(createPrivateKey(ca.key))) return { ca: true, reason: 'the CA key does not match its certificate' };
  } catch {
    return { ca: true, reason: 'the CA key does not parse' };
  }
  if (Date.parse(caCert.validTo) - now < RENEW_BEFORE_MS) return { ca: true, reason: 'the CA expires within 30 days' };
  const cert = serving ? parseBundle(serving.cert)[0] : undefined;
  if (!serving || !cert) return { ca: false, reason: 'no serving certificate' };
  try {
    if (!cert.checkPrivateKey(createPrivateKey(serving.key))) return { ca: false, reason: 'the serving key does not match its certificate' };
  } catch {
    return { ca: false, reason: 'the serving key does not parse' };
  }
  if (!cert.verify(caCert.publicKey)) return { ca: false, reason: 'the serving certificate is not signed by the CA' };
  const names = new Set((cert.subjectAltName ?? '').split(', ').filter((n) => n.startsWith('DNS:')).map((n) => n.slice(4)));
  if (!dnsNames.every((n) => names.has(n))) return { ca: false, reason: 'the serving certificate does not name the service' };
  if (Date.parse(cert.validTo) - now < RENEW_BEFORE_MS) return { ca: false, reason: 'the serving certificate expires within 30 days' };
  return undefined;
}

/**
 * The CA bundle to trust: the first certificate of `current` (the CA that signs now), then every other CA
 * certificate of `current` and `previous` still valid at `now`, each once.
 */
export function caBundle(now: number, current: string, previous = ''): string {
  const [first, ...rest] = parseBundle(current);
  if (!first) throw new Error('no CA certificate');
  const seen = new Set([first.fingerprint256]);
  const kept = [...rest, ...parseBundle(previous)].filter((c) => {
    if (!c.ca || Date.parse(c.validTo) <= now || seen.has(c.fingerprint256)) return false;
    seen.add(c.fingerprint256);
    return true;
  });
  return [first, ...kept].map((c) => c.toString().trim()).join('\n') + '\n';
}
