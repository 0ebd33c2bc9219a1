//! The bounded queue between the request path and the push workers. Adding never waits: when
//! the queue is full the oldest push is dropped (it is the most likely to be stale, and its
//! message stays queued in Redis for the next pickup).

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

pub struct Queue<T> {
    state: Mutex<State<T>>,
    capacity: usize,
    wake: Notify,
}

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

impl<T> Queue<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State {
                items: VecDeque::new(),
                closed: false,
            }),
            capacity,
            wake: Notify::new(),
        }
    }

    /// Adds at the back; returns the item dropped to make room, if any. Refused once closed.
    pub fn push(&self, item: T) -> Result<Option<T>, T> {
        let mut state = self.state.lock().expect("push queue lock");
        if state.closed {
            return Err(item);
        }
        let dropped = if state.items.len() >= self.capacity {
            state.items.pop_front()
        } else {
            None
        };
        state.items.push_back(item);
        drop(state);
        self.wake.notify_one();
        Ok(dropped)
    }

    /// The next item; None once the queue is closed and empty.
    pub async fn pop(&self) -> Option<T> {
        loop {
            let woken = self.wake.notified();
            {
                let mut state = self.state.lock().expect("push queue lock");
                if let Some(item) = state.items.pop_front() {
                    // Another item may be waiting for another worker.
                    if !state.items.is_empty() {
                        self.wake.notify_one();
                    }
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            woken.await;
        }
    }

    /// No more items are accepted; workers finish what is queued, then `pop` returns None.
    pub fn close(&self) {
        self.state.lock().expect("push queue lock").closed = true;
        self.wake.notify_waiters();
    }

    /// Empties the queue; returns how many items it held.
    pub fn clear(&self) -> usize {
        let mut state = self.state.lock().expect("push queue lock");
        std::mem::take(&mut state.items).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_full_queue_drops_its_oldest_item_and_a_closed_one_drains() {
        let queue = Queue::new(2);
        assert_eq!(queue.push(1), Ok(None));
        assert_eq!(queue.push(2), Ok(None));
        assert_eq!(queue.push(3), Ok(Some(1)));
        queue.close();
        assert_eq!(queue.push(4), Err(4));
        assert_eq!(queue.pop().await, Some(2));
        assert_eq!(queue.push(5), Err(5));
        assert_eq!(queue.pop().await, Some(3));
        assert_eq!(queue.pop().await, None);
    }

    #[tokio::test]
    async fn clear_counts_what_it_drops() {
        let queue = Queue::new(4);
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        assert_eq!(queue.clear(), 2);
        assert_eq!(queue.clear(), 0);
    }

    #[tokio::test]
    async fn waiting_workers_are_woken_by_a_push_and_by_close() {
        let queue = std::sync::Arc::new(Queue::new(4));
        let waiting = tokio::spawn({
            let queue = queue.clone();
            async move { (queue.pop().await, queue.pop().await) }
        });
        tokio::task::yield_now().await;
        queue.push("job").unwrap();
        queue.close();
        assert_eq!(waiting.await.unwrap(), (Some("job"), None));
    }
}
