// Shared by the agents of both Credo lines (CommonJS, so 0.5's agent can require it and 0.6's
// import it): reports the live sessions this project's client binds on the server to the
// harness, once the server answered, as `liveSession` / `liveSessionRemoved` events.

/** Wraps the MprConnection's add/removeLiveSession so that each answer becomes an event. */
function reportLiveSessions(connection, emit) {
  const add = connection.addLiveSession.bind(connection);
  connection.addLiveSession = async (params) => {
    const bound = await add(params);
    emit({ event: 'liveSession', connectionId: params.connectionId, sessionId: params.sessionId, bound });
    return bound;
  };
  const remove = connection.removeLiveSession.bind(connection);
  connection.removeLiveSession = async (params) => {
    const sessionId = connection.heldLiveSessions().get(params.connectionId);
    const removed = await remove(params);
    emit({ event: 'liveSessionRemoved', connectionId: params.connectionId, sessionId, removed });
    return removed;
  };
  connection.on('reconnected', () => emit({ event: 'mprReconnected' }));
}

module.exports = { reportLiveSessions };
