// Reads {"cases": [...]} on stdin. For each case, @stacks/transactions builds the same unsigned
// contract call from the signers' order-independent multisig (makeUnsignedContractCall with
// useNonSequentialMultiSig) and prints its bytes and txid; and it decodes the bytes the Rust side
// made (`ours`) and prints their txid and what it read.
import {
  deserializeCV,
  deserializeTransaction,
  makeUnsignedContractCall,
} from '@stacks/transactions';

const chunks = [];
for await (const c of process.stdin) chunks.push(c);
const input = JSON.parse(Buffer.concat(chunks).toString('utf8'));

const out = [];
for (const c of input.cases) {
  const tx = await makeUnsignedContractCall({
    contractAddress: c.contractAddress,
    contractName: c.contractName,
    functionName: c.functionName,
    functionArgs: c.args.map((hex) => deserializeCV(hex)),
    numSignatures: c.numSignatures,
    publicKeys: c.publicKeys,
    useNonSequentialMultiSig: true,
    fee: c.fee,
    nonce: c.nonce,
    network: c.network,
    postConditionMode: 'allow',
  });
  const ours = deserializeTransaction(c.ours);
  // A signed one: the library recovers every signature's key and checks the signer hash.
  let verified = null;
  if (c.signed) {
    try {
      deserializeTransaction(c.signed).verifyOrigin();
      verified = 'ok';
    } catch (e) {
      verified = String(e.message || e);
    }
  }
  out.push({
    hex: tx.serialize(),
    txid: tx.txid(),
    ours_txid: ours.txid(),
    ours_function: ours.payload.functionName.content,
    ours_nonce: ours.auth.spendingCondition.nonce.toString(),
    ours_hash_mode: ours.auth.spendingCondition.hashMode,
    verified,
  });
}
process.stdout.write(JSON.stringify(out));
