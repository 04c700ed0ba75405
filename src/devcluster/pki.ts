// Fresh credentials for a throwaway control plane: a CA, the API server's serving
// certificate, client certificates, and the service-account signing key. Made with
// the openssl command line, since Node can create keys but not X.509 certificates.
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export interface ClientCredentials {
  cert: string;
  key: string;
}

export interface ClusterPki {
  dir: string;
  caCert: string;
  caKey: string;
  servingCert: string;
  servingKey: string;
  serviceAccountKey: string;
  serviceAccountPub: string;
  /** PEM contents, for embedding in kubeconfigs and for our own HTTPS checks. */
  caPem: string;
  admin: ClientCredentials;
  controllerManager: ClientCredentials;
}

async function openssl(args: string[], cwd: string): Promise<void> {
  try {
    await run('openssl', args, { cwd });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: string };
    if (e.code === 'ENOENT') throw new Error('the `openssl` command is needed to make the local control plane\'s certificates (Debian: apt-get install openssl)');
    throw new Error(`openssl ${args[0]} failed: ${e.stderr?.trim() ?? e.message}`);
  }
}

const DAYS = '3650';
const EC_KEY = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A self-signed CA as ca.crt / ca.key in dir. */
export async function createCa(dir: string, commonName: string): Promise<void> {
  await openssl(['req', '-x509', ...EC_KEY, '-keyout', 'ca.key', '-out', 'ca.crt', '-days', DAYS, '-subj', `/CN=${commonName}`], dir);
}

/** SANs for openssl: IPs as IP:, everything else as DNS:. */
export function subjectAltNames(sans: string[]): string {
  return sans.map((s) => (/^[\d.]+$|:/.test(s) ? `IP:${s}` : `DNS:${s}`)).join(',');
}

/** name.crt / name.key in dir, signed by dir's CA, for serving (with SANs) or as a client. */
export async function issueCertificate(dir: string, name: string, subject: string, use: { serverSANs: string[] } | 'client'): Promise<void> {
  const ext =
    use === 'client'
      ? 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature\n'
      : `subjectAltName=${subjectAltNames(use.serverSANs)}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n`;
  await issue(dir, name, subject, ext);
}

async function issue(dir: string, name: string, subject: string, extensions: string): Promise<void> {
  await openssl(['req', '-new', ...EC_KEY, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject], dir);
  await writeFile(path.join(dir, `${name}.ext`), extensions);
  await openssl(
    ['x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-CAcreateserial', '-days', DAYS, '-out', `${name}.crt`, '-extfile', `${name}.ext`],
    dir,
  );
}

/** `sans` are IPs or DNS names the API server's certificate must be valid for. */
export async function createPki(dir: string, sans: string[]): Promise<ClusterPki> {
  await createCa(dir, 'extbackend-local-ca');
  await issueCertificate(dir, 'apiserver', '/CN=kube-apiserver', { serverSANs: sans });
  await issueCertificate(dir, 'admin', '/O=system:masters/CN=extbackend-admin', 'client');
  await issueCertificate(dir, 'controller-manager', '/CN=system:kube-controller-manager', 'client');
  await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-out', 'sa.key'], dir);
  await openssl(['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub'], dir);
  const file = (n: string): string => path.join(dir, n);
  return {
    dir,
    caCert: file('ca.crt'),
    caKey: file('ca.key'),
    servingCert: file('apiserver.crt'),
    servingKey: file('apiserver.key'),
    serviceAccountKey: file('sa.key'),
    serviceAccountPub: file('sa.pub'),
    caPem: await readFile(file('ca.crt'), 'utf8'),
    admin: { cert: await readFile(file('admin.crt'), 'utf8'), key: await readFile(file('admin.key'), 'utf8') },
    controllerManager: {
      cert: await readFile(file('controller-manager.crt'), 'utf8'),
      key: await readFile(file('controller-manager.key'), 'utf8'),
    },
  };
}

/**
 * The same kubeconfig, reaching the API server through another of this host's
 * addresses (a veth into a network namespace): the port stays, and TLS verifies the
 * name "localhost", which the serving certificate always covers.
 */
export function kubeconfigViaAddress(yaml: string, address: string): string {
  return yaml.replace(/server: https:\/\/127\.0\.0\.1:(\d+)/, `server: https://${address}:$1\n    tls-server-name: localhost`);
}

/** A kubeconfig with credentials embedded, so it stays valid when the PKI dir is gone. */
export function kubeconfigYaml(server: string, caPem: string, user: string, creds: ClientCredentials): string {
  const b64 = (s: string): string => Buffer.from(s).toString('base64');
  return [
    'apiVersion: v1',
    'kind: Config',
    'clusters:',
    '- name: extbackend-local',
    '  cluster:',
    `    server: ${server}`,
    `    certificate-authority-data: ${b64(caPem)}`,
    'users:',
    `- name: ${user}`,
    '  user:',
    `    client-certificate-data: ${b64(creds.cert)}`,
    `    client-key-data: ${b64(creds.key)}`,
    'contexts:',
    '- name: extbackend-local',
    '  context:',
    '    cluster: extbackend-local',
    `    user: ${user}`,
    'current-context: extbackend-local',
    '',
  ].join('\n');
}
