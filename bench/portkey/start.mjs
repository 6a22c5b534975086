// Starts the Portkey gateway (pinned in package.json) listening on 127.0.0.1 only: its CLI
// (build/start-server.js --port=N) binds every interface, so listen() is given the host here.
// Usage: NODE_ENV=production node start.mjs --port=N --headless
import net from 'node:net';

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === 'number' || (typeof args[0] === 'string' && /^\d+$/.test(args[0]))) {
    if (args[1] === undefined || args[1] === null) args[1] = '127.0.0.1';
    else if (typeof args[1] === 'function') args.splice(1, 0, '127.0.0.1');
  } else if (args[0] && typeof args[0] === 'object' && args[0].host === undefined && args[0].path === undefined) {
    args[0] = { ...args[0], host: '127.0.0.1' };
  }
  return listen.apply(this, args);
};

await import('./node_modules/@portkey-ai/gateway/build/start-server.js');
