'use strict';
// WebSocket inbound transport for a test mediator (own code). Unlike the stock
// WsInboundTransport of @credo-ts/node 0.5, a session's close() keeps the socket open (a
// recipient's socket is its return route for mediation grants and live-mode deliveries), and dead
// sockets are reaped with ping/pong.
const { AgentEventTypes, CredoError, TransportService, utils } = require('@credo-ts/core');
const WebSocket = require('ws');

class KeepOpenSession {
  constructor(id, socket, logger) {
    this.id = id;
    this.type = 'WebSocket';
    this.socket = socket;
    this.logger = logger;
  }
  async send(_agentContext, encryptedMessage) {
    if (this.socket.readyState !== WebSocket.OPEN) throw new CredoError('WebSocket session closed');
    await new Promise((resolve, reject) =>
      this.socket.send(JSON.stringify(encryptedMessage), (error) => (error ? reject(new CredoError('WebSocket send failed', { cause: error })) : resolve())),
    );
  }
  async close() {
    // keep the socket: the recipient closes it, or the reaper does when it stops answering pings
  }
}

class KeepOpenWsInboundTransport {
  constructor({ port, host = '127.0.0.1', pingIntervalMs = 5000 }) {
    this.port = port;
    this.host = host;
    this.pingIntervalMs = pingIntervalMs;
    this.sockets = new Set();
  }
  async start(agent) {
    const transportService = agent.dependencyManager.resolve(TransportService);
    const logger = agent.config.logger;
    this.server = new WebSocket.Server({ port: this.port, host: this.host });
    await new Promise((resolve, reject) => {
      this.server.once('listening', resolve);
      this.server.once('error', reject);
    });
    this.server.on('connection', (socket) => {
      const session = new KeepOpenSession(utils.uuid(), socket, logger);
      socket.isAlive = true;
      this.sockets.add(socket);
      socket.on('pong', () => (socket.isAlive = true));
      socket.on('message', (data) => {
        let message;
        try {
          message = JSON.parse(data.toString());
        } catch (error) {
          logger.error(`inbound: unparsable frame: ${error}`);
          return;
        }
        agent.events.emit(agent.context, { type: AgentEventTypes.AgentMessageReceived, payload: { message, session } });
      });
      socket.on('close', () => {
        this.sockets.delete(socket);
        transportService.removeSession(session);
      });
      socket.on('error', () => {});
    });
    this.reaper = setInterval(() => {
      for (const socket of this.sockets) {
        if (!socket.isAlive) {
          socket.terminate();
          continue;
        }
        socket.isAlive = false;
        try {
          socket.ping();
        } catch {
          socket.terminate();
        }
      }
    }, this.pingIntervalMs);
    this.reaper.unref();
  }
  async stop() {
    clearInterval(this.reaper);
    for (const socket of this.sockets) socket.terminate();
    await new Promise((resolve) => this.server.close(() => resolve()));
  }
}

module.exports = { KeepOpenWsInboundTransport };
