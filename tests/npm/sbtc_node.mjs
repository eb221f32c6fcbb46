// Reads {"url", "deployer", "address"} on stdin and asks a Stacks node, through the `sbtc`
// library's own client, for the signers' aggregate key (`fetchSignersPublicKey`, an x-only key:
// the library drops the parity byte) and an address's sBTC balance (`fetchSbtcBalance`).
// sbtc 0.3's fetchSbtcBalance reads `sbtcContract` as `<deployer>.sbtc-token`, while
// fetchSignersPublicKey takes the deployer, so both are given.
import { SbtcApiClient } from 'sbtc';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const client = new SbtcApiClient({
  stxApiUrl: input.url,
  sbtcContract: `${input.deployer}.sbtc-token`,
  btcApiUrl: 'http://127.0.0.1:9',
  sbtcApiUrl: 'http://127.0.0.1:9',
});
const aggregateKey = await client.fetchSignersPublicKey(input.deployer);
const balance = await client.fetchSbtcBalance(input.address);
process.stdout.write(JSON.stringify({ aggregateKey, balance: balance.toString() }));
