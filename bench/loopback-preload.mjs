// Preloaded with `node --import` into the peer gateway, which listens on every interface and has
// no option to change that. Binds every server that is given a port but no host to 127.0.0.1,
// so the benchmark never exposes a port beyond this machine.
import net from 'node:net';

const listen = net.Server.prototype.listen;

net.Server.prototype.listen = function listenOnLoopback(...args) {
  const [first, second] = args;
  if (typeof first === 'number' && typeof second !== 'string') {
    return listen.call(this, first, '127.0.0.1', ...args.slice(1).filter((arg) => arg !== undefined));
  }
  if (first !== null && typeof first === 'object' && first.port !== undefined && first.host === undefined && first.path === undefined) {
    return listen.call(this, { ...first, host: '127.0.0.1' }, ...args.slice(1));
  }
  return listen.apply(this, args);
};
