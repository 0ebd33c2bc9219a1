//! `addLiveSession {connectionId, sessionId}` -> `true`: new messages for the connection are
//! pushed to this socket until it closes or removes the session; the newest binding wins.

use serde::Deserialize;

use super::MethodResult;
use crate::rpc::Caller;
use crate::rpc::params::{ConnectionId, SessionId};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    connection_id: ConnectionId,
    session_id: SessionId,
}

pub async fn call(caller: &Caller<'_>, params: Params) -> MethodResult {
    let messages = &caller.context.messages;
    messages
        .open_session(caller.socket, &params.connection_id, &params.session_id)
        .await?;
    Ok(super::boolean(true))
}
