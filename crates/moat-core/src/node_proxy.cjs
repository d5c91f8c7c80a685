// Installed by moat into every proxied container and loaded with NODE_OPTIONS=--require.
// Node.js (before 24) ignores HTTPS_PROXY; this routes the `https` module's default agent
// through the run's proxy with CONNECT, honouring NO_PROXY. It changes nothing else.
'use strict';
const http = require('http');
const https = require('https');
const tls = require('tls');

const proxyUrl = process.env.HTTPS_PROXY || process.env.https_proxy;
if (proxyUrl) {
  const proxy = new URL(proxyUrl);
  const auth = proxy.username
    ? 'Basic ' + Buffer.from(decodeURIComponent(proxy.username) + ':' + decodeURIComponent(proxy.password)).toString('base64')
    : null;
  const noProxy = (process.env.NO_PROXY || process.env.no_proxy || '')
    .split(',')
    .map((s) => s.trim().replace(/^\./, ''))
    .filter(Boolean);
  const bypass = (host) => noProxy.some((n) => host === n || host.endsWith('.' + n));

  class MoatTunnelAgent extends https.Agent {
    createConnection(options, callback) {
      const host = options.host || options.hostname || 'localhost';
      const port = options.port || 443;
      if (bypass(host)) {
        return tls.connect(options);
      }
      const headers = { host: `${host}:${port}` };
      if (auth) headers['proxy-authorization'] = auth;
      const req = http.request({
        host: proxy.hostname,
        port: proxy.port || 80,
        method: 'CONNECT',
        path: `${host}:${port}`,
        headers,
      });
      req.once('connect', (res, socket) => {
        if (res.statusCode !== 200) {
          socket.destroy();
          callback(new Error(`proxy refused CONNECT ${host}:${port} with ${res.statusCode} ${res.headers['x-moat-blocked'] || res.headers['x-moat-error'] || ''}`.trim()));
          return;
        }
        callback(null, tls.connect({ ...options, socket, servername: options.servername || host }));
      });
      req.once('error', callback);
      req.end();
      return undefined;
    }
  }

  https.globalAgent = new MoatTunnelAgent({ keepAlive: true });
}
