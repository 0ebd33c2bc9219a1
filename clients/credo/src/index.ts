export { MprError, MprConnectionError, MprProtocolError } from './errors'
export { MprConnection } from './connection'
export type {
  EncryptedMessage,
  MessagesReceivedParams,
  MprConnectionOptions,
  MprLogger,
  MprQueuedMessage,
  MprQueueStatus,
  PushNotificationToken,
} from './connection'
export type { AgentEventsLike, ConnectionInfo, LiveSessionEventTypes, MessagePickupApiLike, PickupSessionLike } from './agent'
export { MessagePickupRepositoryClient, attachToCredo05Agent, CREDO05_LIVE_SESSION_EVENTS } from './credo05'
export type {
  AddLiveSessionOptions,
  ConnectionIdOptions,
  Credo05AgentLike,
  ExtendedAddMessageOptions,
  ExtendedTakeFromQueueOptions,
  GetAvailableMessageCountOptions,
  MessagePickupRepositoryClientOptions,
  MessagesReceivedCallbackParams,
  QueuedMessage,
  RemoveAllMessagesOptions,
  RemoveMessagesOptions,
} from './credo05'
export { MprQueueTransportRepository, CREDO06_LIVE_SESSION_EVENTS } from './credo06'
export type { Credo06AgentLike, MprQueueTransportRepositoryOptions, QueuedDidCommMessage } from './credo06'
