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
export { MessagePickupRepositoryClient, attachToCredo05Agent, CREDO05_LIVE_SESSION_EVENTS, Credo05HttpInboundTransport, Credo05SocketDockInboundTransport } from './credo05'
export type {
  AddLiveSessionOptions,
  Credo05CoreModule,
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
export { MprQueueTransportRepository, CREDO06_LIVE_SESSION_EVENTS, MprHttpInboundTransport, MprSocketDockInboundTransport } from './credo06'
export type { Credo06AgentLike, Credo06DidcommModule, MprQueueTransportRepositoryOptions, QueuedDidCommMessage } from './credo06'
export type { SocketDockTransportOptions } from './socketdock'
