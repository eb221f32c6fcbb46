// Builds a real sBTC deposit with the official wallet library (`sbtc`), and optionally announces
// it to a deposit API with the library's own `SbtcApiClient.notifySbtc`, exactly as a wallet does.
// Used by tests/deposit_api.rs. Input: one JSON object on stdin:
//   { "network": "regtest", "amount": 100000, "maxFee": 20000, "lockTime": 144,
//     "recipient": "ST...[.contract-name]", "signersKey": "<x-only hex>",
//     "reclaimKey": "<x-only hex>",
//     "funding": { "txid": "...", "vout": 0, "value": 200000, "scriptPubKey": "<p2wpkh hex>" },
//     "privateKey": "<hex of the funding key>", "fee": 1000,
//     "apiUrl": "http://127.0.0.1:port",                       (optional)
//     "override": { "depositScript": "...", "reclaimScript": "...", "vout": 1 } }  (optional)
// Output: one JSON object on stdout: { txid, transactionHex, depositScript, reclaimScript, vout,
// notified? } where `notified` is what notifySbtc returned.
import { buildSbtcDepositTx, SbtcApiClient, MAINNET, TESTNET, REGTEST } from 'sbtc';
import { validateStacksAddress } from '@stacks/transactions';

function hexToBytes(hex) {
  if (typeof hex !== 'string' || hex.length % 2 !== 0 || /[^0-9a-fA-F]/.test(hex)) {
    throw new Error(`not hex: ${hex}`);
  }
  return Uint8Array.from(hex.match(/../g) ?? [], b => parseInt(b, 16));
}

async function readStdin() {
  const chunks = [];
  for await (const c of process.stdin) chunks.push(c);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const networks = { mainnet: MAINNET, testnet: TESTNET, regtest: REGTEST };

async function main() {
  const input = await readStdin();
  const network = networks[input.network ?? 'regtest'];
  if (!network) throw new Error(`unknown network ${input.network}`);
  const [address] = input.recipient.split('.');
  if (!validateStacksAddress(address)) throw new Error(`not a Stacks address: ${input.recipient}`);

  const built = buildSbtcDepositTx({
    network,
    amountSats: BigInt(input.amount),
    stacksAddress: input.recipient,
    signersPublicKey: input.signersKey,
    maxSignerFee: input.maxFee,
    reclaimLockTime: input.lockTime,
    reclaimPublicKey: input.reclaimKey,
  });
  const tx = built.transaction;
  const f = input.funding;
  tx.addInput({
    txid: f.txid,
    index: f.vout,
    witnessUtxo: { script: hexToBytes(f.scriptPubKey), amount: BigInt(f.value) },
  });
  const change = BigInt(f.value) - BigInt(input.amount) - BigInt(input.fee ?? 1000);
  if (change < 0n) throw new Error('the funding output is too small for amount + fee');
  if (change >= 546n) tx.addOutput({ script: hexToBytes(f.scriptPubKey), amount: change });
  tx.sign(hexToBytes(input.privateKey));
  tx.finalize();

  const o = input.override ?? {};
  const depositScript = o.depositScript ?? built.depositScript;
  const reclaimScript = o.reclaimScript ?? built.reclaimScript;
  const vout = o.vout ?? 0;
  const out = {
    txid: tx.id,
    transactionHex: tx.hex,
    depositScript,
    reclaimScript,
    vout,
  };
  if (input.apiUrl) {
    const client = new SbtcApiClient({ sbtcApiUrl: input.apiUrl });
    out.notified = await client.notifySbtc({ depositScript, reclaimScript, vout, transaction: tx });
  }
  process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch(e => {
  process.stderr.write(`deposit.mjs: ${e.stack ?? e}\n`);
  process.exit(1);
});
