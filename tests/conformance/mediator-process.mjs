// A mediator as a separate OS process, so that a test can SIGSTOP it (its `ws` socket then
// stops answering pings, as a hung mediator's would) and SIGKILL it.
//
//   node mediator-process.mjs <ws url> <connectionId> <sessionId>
//
// Connects with the real rpc-websockets Client, calls addLiveSession and prints JSON lines on
// stdout: {"type":"ready"} once addLiveSession answered true, then one
// {"type":"message","connectionId","id","receivedAt","encryptedMessage"} per pushed message, in
// the order received. It never calls removeMessages: everything pushed to it stays in flight.

import rpcWebsockets from 'rpc-websockets';

const { Client } = rpcWebsockets; // CommonJS: no named ESM export (see harness.mjs)
const [url, connectionId, sessionId] = process.argv.slice(2);
if (!url || !connectionId || !sessionId) {
  console.error('usage: node mediator-process.mjs <ws url> <connectionId> <sessionId>');
  process.exit(2);
}

const print = (line) => process.stdout.write(`${JSON.stringify(line)}\n`);
const fail = (why) => {
  print({ type: 'error', message: String(why?.message ?? why) });
  process.exit(1);
};

const client = new Client(url, { autoconnect: true, reconnect: false });
// Listening before addLiveSession: the bind may push a backlog before its reply arrives.
client.on('messagesReceived', (params) => {
  for (const m of params?.messages ?? []) {
    print({ type: 'message', connectionId: params.connectionId, id: m.id, receivedAt: m.receivedAt, encryptedMessage: m.encryptedMessage });
  }
});
client.once('error', fail);
client.once('close', (code) => {
  print({ type: 'closed', code });
  process.exit(0);
});
client.once('open', async () => {
  try {
    const bound = await client.call('addLiveSession', { connectionId, sessionId }, 5000);
    if (bound !== true) fail(`addLiveSession answered ${JSON.stringify(bound)}`);
    print({ type: 'ready' });
  } catch (error) {
    fail(error);
  }
});
// The test's process is the only reader: if it goes away, so does this one (unless stopped).
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
