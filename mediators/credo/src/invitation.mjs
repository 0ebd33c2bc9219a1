// The mediator's invitation: one multi-use out-of-band invitation per wallet, the same URL from
// every instance sharing the wallet, whichever starts first.
//
// The first instance to start creates it and records its URL under a fixed record id; the
// wallet refuses a second record with that id, so when two instances start together on an empty
// wallet one record wins, and the loser drops the invitation it made and takes the winner's.

const RECORD_ID = 'mpr-mediator-invitation'

/** Returns the invitation URL kept in the wallet, creating it when there is none. */
export async function mediatorInvitationUrl(agent, { label, domain }) {
  const kept = await agent.genericRecords.findById(RECORD_ID)
  if (kept) return kept.content.url
  const oob = await agent.didcomm.oob.createInvitation({ label, multiUseInvitation: true })
  const url = oob.outOfBandInvitation.toUrl({ domain })
  try {
    await agent.genericRecords.save({ id: RECORD_ID, content: { url, outOfBandRecordId: oob.id } })
    return url
  } catch (error) {
    const winner = await agent.genericRecords.findById(RECORD_ID)
    if (!winner) throw error
    await agent.didcomm.oob.deleteById(oob.id)
    return winner.content.url
  }
}
