// A Credo 0.5 mediator's use of the client, as written for the 2060 client (see run.sh).
import { Agent, MessagePickupEventTypes, MessagePickupLiveSessionSavedEvent, MessagePickupModule, MessagePickupRepository } from '@credo-ts/core'
import { ConnectionInfo, MessagePickupRepositoryClient, attachToCredo05Agent } from '@MPR_CLIENT@'

const client = new MessagePickupRepositoryClient({ url: 'ws://127.0.0.1:3100', token: 't' })
declare const agent: Agent
const repository: MessagePickupRepository = client
new MessagePickupModule({ messagePickupRepository: client })

client.messagesReceived(async (data) => {
  // MessagePickupSessionRole is not exported by @credo-ts/core 0.5.19.
  const session = await agent.messagePickup.getLiveModeSession({ connectionId: data.connectionId, role: 'MessageHolder' as never })
  if (session) await agent.messagePickup.deliverMessages({ pickupSessionId: session.id, messages: data.messages })
})
client.setConnectionInfo(async (connectionId: string): Promise<ConnectionInfo | undefined> => ({
  maxReceiveBytes: 1000,
  pushNotificationToken: { type: 'fcm', token: connectionId },
}))
agent.events.on(MessagePickupEventTypes.LiveSessionSaved, async (data: MessagePickupLiveSessionSavedEvent) => {
  await client.addLiveSession({ connectionId: data.payload.session.connectionId, sessionId: data.payload.session.id })
})

// Or all of the above wiring in one line:
attachToCredo05Agent(agent, client, { logger: agent.config.logger })
void repository
