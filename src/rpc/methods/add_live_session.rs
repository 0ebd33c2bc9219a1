//! `addLiveSession {connectionId, sessionId}` -> `true`: new messages for the connection are
//! pushed to this socket until it closes or removes the session; the newest binding wins. With
//! the SocketDock adapter on, a sessionId `socketdock:<socket id>` binds the connection to that
//! SocketDock socket instead: its messages are delivered there, the backlog first.

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::error::RpcError;
use crate::rpc::params::{ConnectionId, SessionId};
use crate::socketdock::SESSION_PREFIX;
use crate::store::AttachRefused;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    session_id: SessionId,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    if let Some(socketdock) = &caller.context.socketdock
        && let Some(socket) = params.session_id.strip_prefix(SESSION_PREFIX)
    {
        return match socketdock
            .bind(
                &caller.connection(&params.connection_id),
                socket,
                &params.session_id,
            )
            .await?
        {
            Ok(()) => Ok(super::boolean(true)),
            Err(refused) => Err(RpcError::invalid_params(match refused {
                AttachRefused::Unknown => {
                    "sessionId names a SocketDock socket that is not connected"
                }
                AttachRefused::Full => {
                    "sessionId names a SocketDock socket bound to SOCKETDOCK_MAX_CONNECTIONS_PER_SOCKET connections already"
                }
            })),
        };
    }
    let messages = &caller.context.messages;
    messages
        .open_session(
            caller.socket,
            &caller.connection(&params.connection_id),
            &params.session_id,
        )
        .await?;
    Ok(super::boolean(true))
}
