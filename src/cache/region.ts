/**
 * Which region the agent calls STS in, when --region (or AWS_REGION / AWS_DEFAULT_REGION) does not say.
 *
 * 1. The node's metadata: meta-data/placement/region, else the region of the instance identity document
 *    (dynamic/instance-identity/document).
 * 2. Else the partition's default region. The partition comes from the node's metadata (meta-data/services/partition,
 *    else the ARN of its instance profile in meta-data/iam/info), else from the role ARNs the agent was given
 *    (--role-base-arn, --default-role): `arn:aws-cn:` → cn-north-1, `arn:aws-us-gov:` → us-gov-west-1. A node in
 *    China or GovCloud never falls back to us-east-1, whose STS would not know its account.
 * 3. Else us-east-1, with a warning.
 *
 * A region and role ARNs of different partitions cannot work (STS of one partition does not know the accounts of
 * another): that is logged as a warning at start-up, whichever source the region came from.
 * Partitions and their regions: https://docs.aws.amazon.com/whitepapers/latest/aws-fault-isolation-boundaries/partitions.html
 */
import type { Logger } from 'pino';
import { isRegionName } from '../config.ts';

/** The region used when only the partition is known: where each partition's global endpoints live. */
export const PARTITION_DEFAULT_REGION: Readonly<Record<string, string>> = {
  aws: 'us-east-1',
  'aws-cn': 'cn-north-1',
  'aws-us-gov': 'us-gov-west-1',
  'aws-iso': 'us-iso-east-1',
  'aws-iso-b': 'us-isob-east-1',
  'aws-iso-e': 'eu-isoe-west-1',
  'aws-iso-f': 'us-isof-south-1',
};

/** The partition a region belongs to, by its name's prefix. */
export function partitionOfRegion(region: string): string {
  if (region.startsWith('cn-')) return 'aws-cn';
  if (region.startsWith('us-gov-')) return 'aws-us-gov';
  if (region.startsWith('us-isob-')) return 'aws-iso-b';
  if (region.startsWith('us-isof-')) return 'aws-iso-f';
  if (region.startsWith('eu-isoe-')) return 'aws-iso-e';
  if (region.startsWith('us-iso-')) return 'aws-iso';
  return 'aws';
}

/** The partition of an ARN (`arn:aws-cn:iam::…` → aws-cn), or undefined when it is not an ARN. */
export function partitionOfArn(arn: string | undefined): string | undefined {
  const m = arn === undefined ? null : /^arn:(aws[a-z-]*):/.exec(arn);
  return m ? m[1] : undefined;
}

/** The part of the upstream metadata client this needs (src/server/upstream.ts). */
export interface MetadataReader {
  getText(path: string): Promise<string>;
}

export type RegionSource = 'configured' | 'metadata' | 'identity-document' | 'partition' | 'default';

export interface ResolvedRegion {
  region: string;
  source: RegionSource;
  /** Where the partition came from, when source is 'partition'. */
  partitionFrom?: string;
}

export interface ResolveRegionOptions {
  /** --region, AWS_REGION or AWS_DEFAULT_REGION (empty: not given). */
  configured: string;
  metadata: MetadataReader;
  /** --role-base-arn (as given or autodetected) and --default-role: hints at the partition. */
  roleArns: ReadonlyArray<string | undefined>;
  logger: Pick<Logger, 'info' | 'warn' | 'debug'>;
}

export async function resolveRegion(options: ResolveRegionOptions): Promise<ResolvedRegion> {
  const { configured, logger } = options;
  const arnPartitions = [...new Set(options.roleArns.map(partitionOfArn).filter((p): p is string => p !== undefined))];
  const resolved = configured ? { region: configured, source: 'configured' as const } : await fromNode(options);
  const partition = partitionOfRegion(resolved.region);
  const mismatched = arnPartitions.filter((p) => p !== partition);
  if (mismatched.length > 0) {
    logger.warn(
      { region: resolved.region, source: resolved.source, partition, roleArnPartitions: arnPartitions },
      `region ${resolved.region} is in partition ${partition} but role ARNs are in ${mismatched.join(', ')}: STS will not know those roles; set --region`,
    );
  }
  if (resolved.source === 'default') logger.warn('no --region, AWS_REGION, node metadata region or partition: using us-east-1');
  else if (resolved.source !== 'configured') logger.info(resolved, 'STS region detected');
  return resolved;
}

async function fromNode(options: ResolveRegionOptions): Promise<ResolvedRegion> {
  const { metadata, logger } = options;
  const service = { reachable: false };
  const read = async (path: string): Promise<string | undefined> => {
    try {
      const text = (await metadata.getText(path)).trim();
      service.reachable = true;
      return text;
    } catch (err) {
      // An HTTP answer (404…) means the service is there; anything else (timeout, refused) that it is not.
      if ((err as { kind?: unknown } | null)?.kind === 'status') service.reachable = true;
      logger.debug({ path, err: err instanceof Error ? err.message : String(err) }, 'not in the node metadata');
      return undefined;
    }
  };
  const placement = await read('latest/meta-data/placement/region');
  if (placement !== undefined && isRegionName(placement)) return { region: placement, source: 'metadata' };
  // Without an answer at all the service is not there (not EC2, or blocked): asking more paths would only wait longer.
  if (service.reachable) {
    const doc = await read('latest/dynamic/instance-identity/document');
    const docRegion = doc === undefined ? undefined : regionOfDocument(doc);
    if (docRegion) return { region: docRegion, source: 'identity-document' };
    const partition = defaultRegion(await read('latest/meta-data/services/partition'));
    if (partition) return { region: partition, source: 'partition', partitionFrom: 'meta-data/services/partition' };
    const info = await read('latest/meta-data/iam/info');
    const profile = defaultRegion(info === undefined ? undefined : partitionOfArn(instanceProfileArn(info)));
    if (profile) return { region: profile, source: 'partition', partitionFrom: 'the instance profile ARN' };
  }
  for (const arn of options.roleArns) {
    const region = defaultRegion(partitionOfArn(arn));
    if (region && arn) return { region, source: 'partition', partitionFrom: arn };
  }
  return { region: 'us-east-1', source: 'default' };
}

function defaultRegion(partition: string | undefined): string | undefined {
  return partition === undefined ? undefined : PARTITION_DEFAULT_REGION[partition];
}

function regionOfDocument(text: string): string | undefined {
  try {
    const doc = JSON.parse(text) as unknown;
    const region = typeof doc === 'object' && doc !== null ? (doc as Record<string, unknown>).region : undefined;
    return typeof region === 'string' && isRegionName(region) ? region : undefined;
  } catch {
    return undefined;
  }
}

function instanceProfileArn(text: string): string | undefined {
  try {
    const info = JSON.parse(text) as unknown;
    const arn = typeof info === 'object' && info !== null ? (info as Record<string, unknown>).InstanceProfileArn : undefined;
    return typeof arn === 'string' ? arn : undefined;
  } catch {
    return undefined;
  }
}
