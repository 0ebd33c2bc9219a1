// Push notifications (Aries RFC 0734, push-notifications-fcm/1.0): a recipient tells its mediator
// its device's FCM token with `set-device-info`; the mediator keeps it in the connection record's
// metadata (in the shared wallet, so every instance knows it) and gives it to the server with
// each message it queues for that connection (addMessage's pushNotificationToken), so the server
// wakes the phone while it has no live session. Credo 0.6 has no module for the protocol.

const SET_DEVICE_INFO = 'https://didcomm.org/push-notifications-fcm/1.0/set-device-info'
/** The connection record's metadata key. */
const METADATA_KEY = 'push_notification_fcm'

/** The protocol's handler and the repository's `connectionInfo`, for Credo 0.6's didcomm module. */
export function pushNotificationsFcm(didcomm) {
  class SetDeviceInfoMessage extends didcomm.DidCommMessage {
    constructor() {
      super()
      this.type = SetDeviceInfoMessage.type.messageTypeUri
    }
  }
  SetDeviceInfoMessage.type = didcomm.parseMessageType(SET_DEVICE_INFO)
  // What the decorator of a TypeScript message class does: the dispatcher routes on it.
  didcomm.IsValidMessageType(SetDeviceInfoMessage.type)(SetDeviceInfoMessage.prototype, 'type')

  const connections = (agentContext) => agentContext.dependencyManager.resolve(didcomm.DidCommConnectionRepository)

  const handler = {
    supportedMessages: [SetDeviceInfoMessage],
    async handle(messageContext) {
      const connection = messageContext.assertReadyConnection()
      const { device_token: deviceToken, device_platform: devicePlatform } = messageContext.message
      // A token of null turns pushes off (RFC 0734).
      if (deviceToken !== null && (typeof deviceToken !== 'string' || !deviceToken)) {
        throw new didcomm.DidCommProblemReportError('set-device-info: device_token must be a string or null', {
          problemCode: 'invalid-device-token',
        })
      }
      connection.metadata.set(METADATA_KEY, { deviceToken, devicePlatform: devicePlatform ?? null })
      await connections(messageContext.agentContext).update(messageContext.agentContext, connection)
    },
  }

  /** MprQueueTransportRepository's connectionInfo: the connection's FCM token, if it gave one. */
  async function connectionInfo(connectionId, agentContext) {
    const connection = await connections(agentContext).findById(agentContext, connectionId)
    const token = connection?.metadata.get(METADATA_KEY)?.deviceToken
    return token ? { pushNotificationToken: { type: 'fcm', token } } : undefined
  }

  return { handler, connectionInfo }
}
