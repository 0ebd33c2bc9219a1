//! The acknowledged-write reconcile: on each of several connections a writer adds numbered
//! messages and a consumer takes them (without deleting) and removes exactly what it took,
//! through three instances, while the caller injects faults; then one instance is killed -9,
//! every queue is drained and reconciled against what writers and consumers were told:
//!
//! - lost: an acknowledged add that the drain did not find and the consumer did not remove (a
//!   removal that got an error or no reply may have run: what it named and the drain did not
//!   find is counted apart, "removal unconfirmed");
//! - duplicated: a message handed out again after its removal was acknowledged (handed out
//!   again after a take or remove that failed, it is a re-delivery: counted, and allowed);
//! - errored yet delivered: an add answered "not stored" that a take or the drain handed out;
//! - reordered: a writer's messages handed out against the order it sent them (what a failed
//!   take excuses: `Ledger::first_handouts`; an add left unanswered by the killed instance has
//!   no place in that order: it may run after the next one, sent through the survivor);
//! - id changed: a message handed out under another id than before.
//!
//! The visibility timeout is short, so what a take or remove whose reply was lost left in
//! flight comes back while the faults go on.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Client, Redis, Server, ids, texts, unique_id};

const WRITERS: usize = 4;
const DID: &str = "did:key:z6MkAcknowledged";
/// Short, so that what a lost take or remove left in flight comes back during the run.
pub const VISIBILITY_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long Redis stays frozen (SIGSTOP): past `REDIS_TIMEOUT_MS`, not past the settle timeout.
pub const FREEZE: Duration = Duration::from_millis(1500);
/// Messages a consumer takes at once.
const TAKE_LIMIT: usize = 5;
/// Slack for Redis's clock (visibility deadlines) against ours, and for a loaded machine.
const CLOCK_SLACK: Duration = Duration::from_millis(1000);

/// An add answered with an error that says it was not stored.
struct Refused {
    n: u64,
    message: String,
    answered: Instant,
}

#[derive(Default)]
struct Outcomes {
    acknowledged: Vec<u64>,
    /// "not stored", or Redis refused the call.
    errored: Vec<Refused>,
    /// "the outcome is unknown": Redis stayed away longer than the settle timeout.
    unknown: Vec<u64>,
    /// Sent, but the socket died before any reply.
    unanswered: Vec<u64>,
}

/// The socket to call on: the one held, or else the first of `urls` that accepts one; None,
/// after a pause, while none does.
async fn reconnected<'a>(
    client: &'a mut Option<Client>,
    urls: &[String],
) -> Option<&'a mut Client> {
    if client.is_none() {
        *client = connect_first(urls).await;
        if client.is_none() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    client.as_mut()
}

/// A socket to the first of `urls` that accepts one.
async fn connect_first(urls: &[String]) -> Option<Client> {
    for url in urls {
        if let Some(client) = Client::try_connect(url).await {
            return Some(client);
        }
    }
    None
}

/// Adds `<tag> <n>` for n = 0, 1, … one at a time until `stop`, through the first of `urls`
/// that accepts a socket, reconnecting when a socket dies.
async fn write(
    connection: String,
    tag: String,
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Outcomes {
    let mut outcomes = Outcomes::default();
    let mut client: Option<Client> = None;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(socket) = reconnected(&mut client, &urls).await else {
            continue;
        };
        let params = json!({"connectionId": connection, "recipientDids": [DID], "payload": super::payload(&format!("{tag} {n}"))});
        match socket
            .try_request("addMessage", params, Duration::from_secs(60))
            .await
        {
            Some(reply) if reply.get("result").is_some() => outcomes.acknowledged.push(n),
            Some(reply) => {
                assert_eq!(reply["error"]["code"], -32000, "{reply}");
                let message = reply["error"]["message"].as_str().unwrap();
                // "Written on the primary" (REDIS_WAIT_REPLICAS not met) says it is stored but
                // may be undone by a failover: its outcome is unknown, not "not stored".
                if message.contains("outcome is unknown")
                    || message.contains("written on the primary")
                {
                    outcomes.unknown.push(n);
                } else {
                    outcomes.errored.push(Refused {
                        n,
                        message: message.to_owned(),
                        answered: Instant::now(),
                    });
                }
            }
            None => {
                outcomes.unanswered.push(n);
                client = None;
            }
        }
        n += 1;
    }
    outcomes
}

/// A message as a take handed it out: its id and the writer's number in its text.
#[derive(Clone, Debug)]
struct Handed {
    id: String,
    n: u64,
}

fn handed_out(messages: &[Value], tag: &str) -> Vec<Handed> {
    let prefix = format!("{tag} ");
    ids(messages)
        .into_iter()
        .zip(texts(messages))
        .map(|(id, text)| {
            let n = text
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{text:?} is not this writer's"))
                .parse()
                .unwrap();
            Handed { id, n }
        })
        .collect()
}

/// What one consumer saw, in the order it saw it.
enum Consumed {
    /// A take reply (oldest first), and when the take was sent.
    Taken {
        sent: Instant,
        messages: Vec<Handed>,
    },
    /// A take that got an error (`lost: false`) or no reply: it may have put messages in flight.
    TakeFailed { sent: Instant, lost: bool },
    /// `removeMessages` of these numbers answered `true`.
    Removed(Vec<u64>),
    /// `removeMessages` of these numbers got an error or no reply: it may or may not have run.
    RemoveFailed(Vec<u64>),
}

#[derive(Default)]
struct Consumption {
    events: Vec<Consumed>,
    /// When the last take that may have left messages in flight was sent (its reply was lost,
    /// or the removal of what it returned was).
    last_unsettled_take: Option<Instant>,
}

/// For a call that did not succeed: whether its reply was lost. An error must be Redis's
/// (-32000); without a reply the socket is dead or stuck, and is dropped for a new one.
fn reply_lost(reply: Option<Value>, client: &mut Option<Client>) -> bool {
    match reply {
        Some(reply) => {
            assert_eq!(reply["error"]["code"], -32000, "{reply}");
            false
        }
        None => {
            *client = None;
            true
        }
    }
}

/// Takes up to `TAKE_LIMIT` messages (without deleting) and removes exactly those, until
/// `stop`, through the first of `urls` that accepts a socket, reconnecting when a socket dies.
async fn consume(
    connection: String,
    tag: String,
    urls: Vec<String>,
    stop: Arc<AtomicBool>,
) -> Consumption {
    let call_timeout = Duration::from_secs(10);
    let mut consumption = Consumption::default();
    let mut client: Option<Client> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(socket) = reconnected(&mut client, &urls).await else {
            continue;
        };
        let take =
            json!({"connectionId": connection, "limit": TAKE_LIMIT, "deleteMessages": false});
        let sent = Instant::now();
        let messages = match socket
            .try_request("takeFromQueue", take, call_timeout)
            .await
        {
            Some(reply) if reply.get("result").is_some() => {
                handed_out(reply["result"].as_array().expect("an array"), &tag)
            }
            reply => {
                let lost = reply_lost(reply, &mut client);
                consumption.events.push(Consumed::TakeFailed { sent, lost });
                consumption.last_unsettled_take = Some(sent);
                continue;
            }
        };
        if messages.is_empty() {
            // Nothing pending: poll again soon (a consumer without a live session polls).
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        let message_ids: Vec<&str> = messages.iter().map(|m| m.id.as_str()).collect();
        let numbers: Vec<u64> = messages.iter().map(|m| m.n).collect();
        let remove = json!({"connectionId": connection, "messageIds": message_ids});
        consumption.events.push(Consumed::Taken { sent, messages });
        match socket
            .try_request("removeMessages", remove, call_timeout)
            .await
        {
            Some(reply) if reply.get("result").is_some() => {
                assert_eq!(reply["result"], true, "{reply}");
                consumption.events.push(Consumed::Removed(numbers));
            }
            reply => {
                reply_lost(reply, &mut client);
                consumption.events.push(Consumed::RemoveFailed(numbers));
                consumption.last_unsettled_take = Some(sent);
            }
        }
    }
    consumption
}

/// Takes (deleting) everything pending on `connection` until a take returns nothing and the
/// count of pending messages is 0.
async fn drain(client: &mut Client, connection: &str, tag: &str) -> Vec<Handed> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut drained = Vec::new();
    loop {
        assert!(Instant::now() < deadline, "{connection} never drained");
        let taken = client
            .take(json!({"connectionId": connection, "limit": 1000, "deleteMessages": true}))
            .await;
        if taken.is_empty() && client.count(connection).await == 0 {
            return drained;
        }
        drained.extend(handed_out(&taken, tag));
    }
}

#[derive(Default)]
pub struct Counts {
    pub acknowledged: usize,
    pub errored: usize,
    pub unknown: usize,
    /// Answered "outcome unknown" and handed out all the same: they were stored before their
    /// fence (the reply was lost after Redis ran the add).
    pub unknown_stored: usize,
    pub unanswered: usize,
    /// Messages in consumers' take replies (re-deliveries included).
    pub taken: usize,
    /// Messages whose removal by a consumer was acknowledged.
    pub removed: usize,
    /// Consumers' takes without a reply (the socket died) or with an error.
    pub take_lost: usize,
    pub take_errored: usize,
    /// Messages named in a `removeMessages` that got an error or no reply.
    pub remove_failed: usize,
    /// Handed out again after a take or remove whose reply was lost or an error: legitimate.
    pub redelivered: usize,
    /// Acknowledged, handed out, and gone after a removal that got an error or no reply (which
    /// may have run): delivered, but not provably removed by the consumer.
    pub removal_unconfirmed: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub delivered_errored: usize,
    pub reordered: usize,
    /// The same number handed out under another id.
    pub id_changed: usize,
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.acknowledged += other.acknowledged;
        self.errored += other.errored;
        self.unknown += other.unknown;
        self.unknown_stored += other.unknown_stored;
        self.unanswered += other.unanswered;
        self.taken += other.taken;
        self.removed += other.removed;
        self.take_lost += other.take_lost;
        self.take_errored += other.take_errored;
        self.remove_failed += other.remove_failed;
        self.redelivered += other.redelivered;
        self.removal_unconfirmed += other.removal_unconfirmed;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.delivered_errored += other.delivered_errored;
        self.reordered += other.reordered;
        self.id_changed += other.id_changed;
    }
}

/// Every hand-out of one connection's messages, replayed in order.
#[derive(Default)]
struct Ledger {
    /// The writer's tag, for the reports.
    tag: String,
    counts: Counts,
    id_of: HashMap<u64, String>,
    handed: HashSet<u64>,
    /// Removed with an acknowledgement: by `removeMessages` answering `true`, or by the drain
    /// (a take that deletes).
    removed: HashSet<u64>,
    /// Named in a `removeMessages` that got an error or no reply.
    remove_failed: HashSet<u64>,
    /// When the take that first handed each message out was sent (drained ones: none).
    first_taken: HashMap<u64, Instant>,
    /// Failed takes: when they were sent.
    failed_takes: Vec<Instant>,
    /// The highest number first handed out by a take no failed take can excuse (see
    /// `first_handouts`).
    highest_unexcused: Option<u64>,
    /// Adds whose socket died before their reply (the instance was killed): such an add may
    /// run after the writer's next one, sent through the other instance, so it has no place
    /// in the writer's order.
    unanswered: HashSet<u64>,
}

impl Ledger {
    fn new(tag: &str, unanswered: &[u64]) -> Self {
        Self {
            tag: tag.to_owned(),
            unanswered: unanswered.iter().copied().collect(),
            ..Self::default()
        }
    }

    /// A message handed out again after its removal was acknowledged is a duplicate. (So is
    /// one removed with an acknowledgement twice, but a removal always follows a hand-out, so
    /// that hand-out is already counted.) Handed out again otherwise, it is a re-delivery.
    /// Returns whether this is its first hand-out.
    fn hand_out(&mut self, message: &Handed) -> bool {
        let id = self
            .id_of
            .entry(message.n)
            .or_insert_with(|| message.id.clone());
        if *id != message.id {
            eprintln!(
                "{} {} handed out as {id} and as {}",
                self.tag, message.n, message.id
            );
            self.counts.id_changed += 1;
        }
        if self.removed.contains(&message.n) {
            eprintln!(
                "{} {} ({}) handed out after its removal was acknowledged",
                self.tag, message.n, message.id
            );
            self.counts.duplicated += 1;
        }
        let first = self.handed.insert(message.n);
        if !first && !self.removed.contains(&message.n) {
            self.counts.redelivered += 1;
        }
        first
    }

    /// Order across take replies. A message handed out for the first time must not come after
    /// a higher one first handed out earlier — unless a take that failed before the higher one
    /// may have held it in flight: it then comes back after the visibility timeout, behind
    /// newer ones. A failed take ran by the end of a freeze at the latest, and what it took is
    /// pending again a visibility timeout after it ran, so only a failed take sent within
    /// `FREEZE + VISIBILITY_TIMEOUT` (plus slack) before the higher one's take can excuse.
    fn first_handouts(&mut self, sent: Instant, numbers: &[u64]) {
        let excuse = FREEZE + VISIBILITY_TIMEOUT + CLOCK_SLACK;
        let excused = self
            .failed_takes
            .iter()
            .any(|failed| *failed <= sent && sent <= *failed + excuse);
        let ordered: Vec<u64> = numbers
            .iter()
            .copied()
            .filter(|n| !self.unanswered.contains(n))
            .collect();
        let numbers = &ordered;
        for &n in numbers {
            if self.highest_unexcused.is_some_and(|highest| n < highest) {
                eprintln!(
                    "{} {n} first handed out after {highest}",
                    self.tag,
                    highest = self.highest_unexcused.unwrap()
                );
                self.counts.reordered += 1;
            }
        }
        if !excused {
            self.highest_unexcused = numbers.iter().copied().chain(self.highest_unexcused).max();
        }
    }

    /// Counts the neighbours in `messages` that are not in strictly ascending order.
    fn count_out_of_order(&mut self, source: &str, messages: &[Handed]) {
        let ordered: Vec<&Handed> = messages
            .iter()
            .filter(|message| !self.unanswered.contains(&message.n))
            .collect();
        for pair in ordered.windows(2).filter(|pair| pair[0].n >= pair[1].n) {
            eprintln!(
                "{} {} before {} in {source}",
                self.tag, pair[0].n, pair[1].n
            );
            self.counts.reordered += 1;
        }
    }

    fn taken(&mut self, sent: Instant, messages: &[Handed]) {
        self.counts.taken += messages.len();
        // Within one reply: oldest first.
        self.count_out_of_order("a take reply", messages);
        let first: Vec<u64> = messages
            .iter()
            .filter(|message| self.hand_out(message))
            .map(|message| message.n)
            .collect();
        self.first_taken.extend(first.iter().map(|&n| (n, sent)));
        self.first_handouts(sent, &first);
    }

    fn replay(&mut self, consumption: &Consumption) {
        for event in &consumption.events {
            match event {
                Consumed::Taken { sent, messages } => self.taken(*sent, messages),
                Consumed::TakeFailed { sent, lost } => {
                    self.failed_takes.push(*sent);
                    if *lost {
                        self.counts.take_lost += 1;
                    } else {
                        self.counts.take_errored += 1;
                    }
                }
                Consumed::Removed(numbers) => {
                    self.counts.removed += numbers.len();
                    self.removed.extend(numbers);
                }
                Consumed::RemoveFailed(numbers) => {
                    self.counts.remove_failed += numbers.len();
                    self.remove_failed.extend(numbers);
                }
            }
        }
    }

    /// The drain deletes what it takes: each message it hands out counts as removed.
    fn drained(&mut self, drained: &[Handed]) {
        // As the writer sent them (the drain starts once nothing is in flight any more).
        self.count_out_of_order("the drain", drained);
        for message in drained {
            self.hand_out(message);
            self.removed.insert(message.n);
        }
    }

    /// Says what is known of an add refused as "not stored" that was handed out all the same.
    fn report_refused_yet_delivered(&self, refused: &Refused) {
        let id = &self.id_of[&refused.n];
        let taken = match self.first_taken.get(&refused.n) {
            Some(sent) if *sent < refused.answered => format!(
                "first taken by a take sent {} ms before that reply",
                (refused.answered - *sent).as_millis()
            ),
            Some(_) => "first taken after that reply".to_owned(),
            None => "found by the drain".to_owned(),
        };
        let removed = if self.removed.contains(&refused.n) {
            "removed with an acknowledgement"
        } else {
            "not removed with an acknowledgement"
        };
        eprintln!(
            "{} {} ({id}) got \"{}\", yet was delivered: {taken}, {removed}",
            self.tag, refused.n, refused.message
        );
    }

    fn settle(mut self, outcomes: &Outcomes) -> Counts {
        for n in &outcomes.acknowledged {
            if self.removed.contains(n) {
                continue;
            }
            if self.remove_failed.contains(n) {
                self.counts.removal_unconfirmed += 1;
            } else {
                eprintln!("{} {n}: acknowledged, lost", self.tag);
                self.counts.lost += 1;
            }
        }
        for refused in &outcomes.errored {
            if self.handed.contains(&refused.n) {
                self.report_refused_yet_delivered(refused);
                self.counts.delivered_errored += 1;
            }
        }
        self.counts.acknowledged = outcomes.acknowledged.len();
        self.counts.errored = outcomes.errored.len();
        self.counts.unknown = outcomes.unknown.len();
        self.counts.unknown_stored = outcomes
            .unknown
            .iter()
            .filter(|n| self.handed.contains(n))
            .count();
        self.counts.unanswered = outcomes.unanswered.len();
        self.counts
    }
}

/// One connection id, written to by one writer and read by one consumer.
struct Connection {
    id: String,
    tag: String,
    writer: tokio::task::JoinHandle<Outcomes>,
    consumer: tokio::task::JoinHandle<Consumption>,
}

/// Runs writers and consumers through three instances started with `env`, `faults` meanwhile,
/// then kills one instance, drains and reconciles; prints the counts and returns them.
pub async fn reconcile(
    redis: &mut Redis,
    env: &[(&str, &str)],
    faults: impl AsyncFnOnce(&mut Redis),
) -> Counts {
    let survivors = [
        Server::start(redis, env).await,
        Server::start(redis, env).await,
    ];
    let mut doomed = Server::start(redis, env).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut connections = Vec::new();
    for w in 0..WRITERS {
        // Half of the writers and their consumers start on the instance that will be killed,
        // then move to one of the others; the rest stay on one of those two.
        let mut urls = vec![survivors[w / 2 % 2].url()];
        if w % 2 == 1 {
            urls.insert(0, doomed.url());
        }
        let id = unique_id("c");
        let tag = format!("w{w}");
        let writer = tokio::spawn(write(id.clone(), tag.clone(), urls.clone(), stop.clone()));
        let consumer = tokio::spawn(consume(id.clone(), tag.clone(), urls, stop.clone()));
        connections.push(Connection {
            id,
            tag,
            writer,
            consumer,
        });
    }
    faults(redis).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    doomed.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut finished = Vec::new();
    for connection in connections {
        let outcomes = connection.writer.await.expect("writer");
        let consumption = connection.consumer.await.expect("consumer");
        finished.push((connection.id, connection.tag, outcomes, consumption));
    }
    // The drain reads through an instance of its own, without the short call timeout: its
    // takes delete, so a reply lost to a slow moment would hide messages.
    let reader = Server::start(redis, &[("REDIS_TIMEOUT_MS", "10000")]).await;
    // What a failed take or remove left in flight is pending again a visibility timeout after
    // that take ran; drain once it is, so that the drain sees every message left.
    if let Some(last) = finished
        .iter()
        .filter_map(|(_, _, _, consumption)| consumption.last_unsettled_take)
        .max()
    {
        tokio::time::sleep_until((last + VISIBILITY_TIMEOUT + CLOCK_SLACK).into()).await;
    }
    let mut drainer = Client::connect(&reader.url()).await;
    let mut counts = Counts::default();
    for (connection, tag, outcomes, consumption) in finished {
        let mut ledger = Ledger::new(&tag, &outcomes.unanswered);
        ledger.replay(&consumption);
        ledger.drained(&drain(&mut drainer, &connection, &tag).await);
        counts += ledger.settle(&outcomes);
    }
    let &Counts {
        acknowledged,
        errored,
        unknown,
        unknown_stored,
        unanswered,
        taken,
        removed,
        take_lost,
        take_errored,
        remove_failed,
        redelivered,
        removal_unconfirmed,
        lost,
        duplicated,
        delivered_errored,
        reordered,
        id_changed,
    } = &counts;
    eprintln!(
        "acknowledged {acknowledged}, errored {errored}, outcome unknown {unknown}, answered unknown, found stored {unknown_stored}, \
         unanswered {unanswered}; \
         taken {taken}, removed-acknowledged {removed}, remove failed {remove_failed}, \
         take replies lost {take_lost}, take errored {take_errored}, re-delivered {redelivered}, \
         removal unconfirmed {removal_unconfirmed}; \
         lost {lost}, duplicated {duplicated}, errored yet delivered {delivered_errored}, \
         reordered {reordered}, id changed {id_changed}"
    );
    counts
}

impl Counts {
    /// What must hold after any run where replication does not lag behind the replies (one
    /// node, or REDIS_WAIT_REPLICAS): progress, and nothing handed out wrongly.
    pub fn assert_sound(&self) {
        self.assert_truthful();
        assert_eq!(
            self.duplicated, 0,
            "messages handed out after their removal"
        );
    }

    /// What must hold even when a failover can undo what the lost primary acknowledged
    /// (REDIS_WAIT_REPLICAS=0): a removal it undid hands the message out again (at least
    /// once, `docs/architecture.md`), so such duplicates are the caller's to print, not an
    /// error; errors, order and ids still must not lie.
    pub fn assert_truthful(&self) {
        assert!(
            self.acknowledged > 100,
            "the writers made progress: {}",
            self.acknowledged
        );
        assert!(
            self.removed > 100,
            "the consumers made progress: {}",
            self.removed
        );
        assert_eq!(
            self.delivered_errored, 0,
            "messages that got an error reply were stored"
        );
        assert_eq!(self.reordered, 0, "a writer's messages out of order");
        assert_eq!(self.id_changed, 0, "a message handed out under another id");
    }
}
