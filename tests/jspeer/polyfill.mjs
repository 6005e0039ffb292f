// Node 20 (Debian's) lacks Promise.withResolvers (Node 22), which js-libp2p 3.x uses.
// Imported first by peer.mjs, so it is in place before any libp2p module is evaluated.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function withResolvers () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
