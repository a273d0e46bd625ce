/**
 * A minimal S3 endpoint for tests of the upload code without a Ceph: PutObject, the multipart
 * calls (create, part, complete, abort) and HeadObject/HeadBucket, objects kept in memory. Like
 * RGW before Squid it refuses a body whose SHA-256 is not the signed `x-amz-content-sha256`
 * (XAmzContentSHA256Mismatch), and like S3 one whose `x-amz-checksum-sha256` is wrong
 * (BadDigest); it records the checksum headers of every part so that tests can check them.
 * Signatures are not checked. Run standalone (`node --import tsx s3-fake.ts PORT`) for benches.
 */
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakePart {
  number: number;
  length: number;
  contentSha256: string | undefined;
  checksumSha256: string | undefined;
}

export interface FakeS3 {
  url: string;
  objects: Map<string, Buffer>;
  /** Parts received, by upload id. */
  uploads: Map<string, { key: string; parts: Map<number, Buffer>; log: FakePart[] }>;
  aborted: string[];
  close(): Promise<void>;
}

function body(req: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

function xmlError(res: ServerResponse, status: number, code: string): void {
  res.writeHead(status, { 'content-type': 'application/xml' });
  res.end(`<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${code}</Message></Error>`);
}

/** `keep: false` (benches): bodies are checked, then dropped (objects and parts are kept empty). */
export async function startFakeS3(port = 0, keep = true): Promise<FakeS3> {
  const objects = new Map<string, Buffer>();
  const uploads: FakeS3['uploads'] = new Map();
  const aborted: string[] = [];
  let nextId = 1;
  const server: Server = createServer((req, res) => {
    void (async () => {
      const u = new URL(req.url ?? '/', 'http://x');
      const [, bucket, ...rest] = u.pathname.split('/');
      const key = decodeURIComponent(rest.join('/'));
      const data = await body(req);
      const contentSha = req.headers['x-amz-content-sha256'] as string | undefined;
      const checksum = req.headers['x-amz-checksum-sha256'] as string | undefined;
      const digest = createHash('sha256').update(data).digest();
      if (contentSha !== undefined && /^[0-9a-f]{64}$/.test(contentSha) && contentSha !== digest.toString('hex'))
        return xmlError(res, 400, 'XAmzContentSHA256Mismatch');
      if (checksum !== undefined && checksum !== digest.toString('base64')) return xmlError(res, 400, 'BadDigest');
      const uploadId = u.searchParams.get('uploadId');
      const name = `${bucket}/${key}`;
      if (req.method === 'HEAD') {
        if (key === '') return res.writeHead(200).end();
        const o = objects.get(name);
        if (o === undefined) return res.writeHead(404).end();
        return res.writeHead(200, { 'content-length': o.length, etag: '"x"' }).end();
      }
      if (req.method === 'POST' && u.searchParams.has('uploads')) {
        const id = `up${nextId++}`;
        uploads.set(id, { key: name, parts: new Map(), log: [] });
        res.writeHead(200, { 'content-type': 'application/xml' });
        return res.end(
          `<?xml version="1.0" encoding="UTF-8"?><InitiateMultipartUploadResult><Bucket>${bucket}</Bucket><Key>${key}</Key><UploadId>${id}</UploadId></InitiateMultipartUploadResult>`,
        );
      }
      const up = uploadId === null ? undefined : uploads.get(uploadId);
      if (uploadId !== null && up === undefined) return xmlError(res, 404, 'NoSuchUpload');
      if (req.method === 'PUT' && up !== undefined) {
        const n = Number(u.searchParams.get('partNumber'));
        up.parts.set(n, keep ? data : Buffer.alloc(0));
        up.log.push({ number: n, length: data.length, contentSha256: contentSha, checksumSha256: checksum });
        return res.writeHead(200, { etag: `"p${n}"` }).end();
      }
      if (req.method === 'POST' && up !== undefined && uploadId !== null) {
        if (req.headers['if-none-match'] === '*' && objects.has(name)) return xmlError(res, 412, 'PreconditionFailed');
        const numbers = [...data.toString().matchAll(/<PartNumber>(\d+)<\/PartNumber>/g)].map((m) => Number(m[1]));
        objects.set(name, Buffer.concat(numbers.map((n) => up.parts.get(n) ?? Buffer.alloc(0))));
        uploads.delete(uploadId);
        res.writeHead(200, { 'content-type': 'application/xml' });
        return res.end(
          `<?xml version="1.0" encoding="UTF-8"?><CompleteMultipartUploadResult><Bucket>${bucket}</Bucket><Key>${key}</Key><ETag>"o"</ETag></CompleteMultipartUploadResult>`,
        );
      }
      if (req.method === 'DELETE' && uploadId !== null) {
        uploads.delete(uploadId);
        aborted.push(uploadId);
        return res.writeHead(204).end();
      }
      if (req.method === 'PUT') {
        if (req.headers['if-none-match'] === '*' && objects.has(name)) return xmlError(res, 412, 'PreconditionFailed');
        objects.set(name, keep ? data : Buffer.alloc(0));
        return res.writeHead(200, { etag: '"o"' }).end();
      }
      xmlError(res, 400, 'NotImplemented');
    })().catch(() => xmlError(res, 500, 'InternalError'));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const { port: bound } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${bound}`,
    objects,
    uploads,
    aborted,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

if (process.argv[1]?.endsWith('s3-fake.ts') && process.argv[2] !== undefined) {
  void startFakeS3(Number(process.argv[2]), false).then((s) => console.log(s.url));
}
