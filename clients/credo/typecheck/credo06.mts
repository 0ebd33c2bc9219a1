// A Credo 0.6 mediator's use of the repository (see run.sh).
import type { Agent } from '@credo-ts/core'
import { DidCommModule } from '@credo-ts/didcomm'
import type { DidCommQueueTransportRepository } from '@credo-ts/didcomm'
import { MprQueueTransportRepository } from '@MPR_CLIENT@'

const queueTransportRepository = new MprQueueTransportRepository({ url: 'ws://127.0.0.1:3100', token: 't' })
const repository: DidCommQueueTransportRepository = queueTransportRepository
new DidCommModule({ queueTransportRepository })
declare const agent: Agent<{ didcomm: DidCommModule }>
queueTransportRepository.attach(agent, { logger: agent.config.logger })
void repository
