// A standard js-libp2p 3.x peer that joins a quantum-mesh coordinator (tests/mesh/test_js_peer_e2e.py).
// argv: the coordinator's multiaddr. It prints one JSON line per event on stdout and reads
// commands from stdin, one per line: "ping" invokes the coordinator's `ping` method on
// /qmesh/invoke/1.0.0 (4-byte big-endian length + UTF-8 JSON frames) and prints the reply;
// "quit" stops. Everything is bounded: each call times out after 10 s.
import './polyfill.mjs'
import { createInterface } from 'node:readline'
import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { gossipsub } from '@libp2p/gossipsub'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { multiaddr } from '@multiformats/multiaddr'
import { createLibp2p } from 'libp2p'

const ADVERT_TOPIC = 'qmesh/adverts/1.0.0'
const INVOKE_PROTOCOL = '/qmesh/invoke/1.0.0'
const say = (event) => process.stdout.write(JSON.stringify(event) + '\n')

const coordinator = multiaddr(process.argv[2])
const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0'] },
  transports: [tcp()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: { identify: identify(), pubsub: gossipsub({ allowPublishToZeroTopicPeers: true }) }
})
say({ event: 'started', peer_id: node.peerId.toString() })

const heard = new Set()
node.services.pubsub.addEventListener('message', (evt) => {
  if (evt.detail.topic !== ADVERT_TOPIC) return
  try {
    const advert = JSON.parse(new TextDecoder().decode(evt.detail.data))
    if (!heard.has(advert.peer_id)) {
      heard.add(advert.peer_id)
      say({ event: 'advert', peer_id: advert.peer_id, services: advert.services })
    }
  } catch (err) {
    say({ event: 'bad_advert', error: String(err) })
  }
})
node.services.pubsub.subscribe(ADVERT_TOPIC)
await node.dial(coordinator)
say({ event: 'connected' })

function frame (obj) {
  const body = new TextEncoder().encode(JSON.stringify(obj))
  const out = new Uint8Array(4 + body.length)
  new DataView(out.buffer).setUint32(0, body.length)
  out.set(body, 4)
  return out
}

async function invoke (method, params) {
  const signal = AbortSignal.timeout(10_000)
  const stream = await node.dialProtocol(coordinator, INVOKE_PROTOCOL, { signal })
  stream.send(frame({ v: 1, id: '1', method, params }))
  let buffered = new Uint8Array(0)
  for await (const chunk of stream) {
    const bytes = chunk.subarray()
    const joined = new Uint8Array(buffered.length + bytes.length)
    joined.set(buffered)
    joined.set(bytes, buffered.length)
    buffered = joined
    if (buffered.length >= 4) {
      const length = new DataView(buffered.buffer, buffered.byteOffset).getUint32(0)
      if (buffered.length >= 4 + length) {
        await stream.close().catch(() => {})
        return JSON.parse(new TextDecoder().decode(buffered.subarray(4, 4 + length)))
      }
    }
  }
  throw new Error(`stream ended after ${buffered.length} bytes`)
}

for await (const line of createInterface({ input: process.stdin })) {
  const command = line.trim()
  if (command === 'quit') break
  if (command === 'ping') {
    try {
      say({ event: 'reply', reply: await invoke('ping', {}) })
    } catch (err) {
      say({ event: 'reply_failed', error: String(err) })
    }
  }
}
await node.stop()
process.exit(0)
