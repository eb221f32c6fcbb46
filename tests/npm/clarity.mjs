// Reads {"decode": [hex, ...]} on stdin. For each hex, @stacks/transactions decodes the Clarity
// value and prints it back re-serialized and in Clarity notation. Then it prints values it built
// itself (the kinds contract calls and reads use), serialized, for the Rust side to decode.
// (Tuples are written with their fields sorted: the bytes are sorted either way, but cvToString
// prints fields in the order they were given.)
import { Cl, cvToString, deserializeCV, serializeCV } from '@stacks/transactions';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const decoded = input.decode.map((hex) => {
  const cv = deserializeCV(hex);
  return { hex: serializeCV(cv), text: cvToString(cv) };
});

const built = [
  Cl.uint(123456789n),
  Cl.int(-42n),
  Cl.bufferFromHex('00ff'.repeat(16)),
  Cl.principal('SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4'),
  Cl.principal('SM3VDXK3WZZSA84XXFKAFAF15NNZX32CTSG82JFQ4.sbtc-registry'),
  Cl.tuple({ hashbytes: Cl.bufferFromHex('11'.repeat(32)), version: Cl.bufferFromHex('06') }),
  Cl.list([Cl.stringAscii('deposit'), Cl.stringUtf8('\u20bf')]),
  Cl.some(Cl.ok(Cl.none())),
  Cl.error(Cl.uint(1)),
  Cl.bool(false),
].map((cv) => ({ hex: serializeCV(cv), text: cvToString(cv) }));

process.stdout.write(JSON.stringify({ decoded, built }));
