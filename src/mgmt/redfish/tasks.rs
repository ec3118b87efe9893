//! The TaskService (Redfish Task schema, DSP0266 §"Asynchronous operations"): assign and
//! unassign answer `202 Accepted` with the `Location` of a Task, which stays `Running` until
//! the pool reports the outcome of every operation it covers, then becomes `Completed` or
//! `Exception` with a message per failure. A Task is never left half-done: a pool that drops
//! an operation's [`Completer`] fails it ([`PoolError::Abandoned`]).
//!
//! The table keeps the newest [`MAX_TASKS`] tasks; the oldest finished ones make room.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::SystemTime;

use serde_json::{json, Value};

use super::error::Message;
use crate::mgmt::clock::Clock;
use crate::mgmt::pool::{Completer, PoolError};
use crate::sync::MutexExt;

/// How many tasks are kept.
pub const MAX_TASKS: usize = 256;

/// Redfish `TaskState` values this service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Operations in flight.
    Running,
    /// Every operation succeeded.
    Completed,
    /// At least one operation failed.
    Exception,
}

impl TaskState {
    /// The Redfish enum member.
    pub fn as_redfish(self) -> &'static str {
        match self {
            TaskState::Running => "Running",
            TaskState::Completed => "Completed",
            TaskState::Exception => "Exception",
        }
    }
}

/// One task.
#[derive(Debug, Clone)]
pub struct Task {
    /// Id (decimal).
    pub id: u64,
    /// What it does, for people.
    pub name: String,
    /// State.
    pub state: TaskState,
    /// When it started.
    pub start: SystemTime,
    /// When it finished.
    pub end: Option<SystemTime>,
    /// Operations not yet finished.
    pub pending: usize,
    /// Operations in total.
    pub total: usize,
    /// Why operations failed.
    pub failures: Vec<String>,
    /// The request that started it: (method, URI).
    pub payload: (String, String),
    /// What the operation produced, shown as the task's `Oem.Pcietun` (the card an add put
    /// into the inventory); set before the operation's outcome.
    pub result: Option<Value>,
}

/// The task table.
#[derive(Debug)]
pub struct TaskTable {
    inner: Mutex<Inner>,
    clock: Arc<dyn Clock>,
}

#[derive(Debug)]
struct Inner {
    tasks: BTreeMap<u64, Task>,
    next: u64,
}

impl TaskTable {
    /// An empty table using `clock` for timestamps.
    pub fn new(clock: Arc<dyn Clock>) -> Arc<Self> {
        Arc::new(TaskTable {
            inner: Mutex::new(Inner {
                tasks: BTreeMap::new(),
                next: 1,
            }),
            clock,
        })
    }

    /// Start a task covering `operations` operations.
    pub fn create(&self, name: String, method: &str, uri: &str, operations: usize) -> u64 {
        let mut inner = self.inner.lock_or_recover();
        let id = inner.next;
        inner.next += 1;
        while inner.tasks.len() >= MAX_TASKS {
            let oldest = inner
                .tasks
                .iter()
                .find(|(_, t)| t.state != TaskState::Running)
                .or_else(|| inner.tasks.iter().next())
                .map(|(id, _)| *id);
            match oldest {
                Some(old) => inner.tasks.remove(&old),
                None => break,
            };
        }
        inner.tasks.insert(
            id,
            Task {
                id,
                name,
                state: if operations == 0 {
                    TaskState::Completed
                } else {
                    TaskState::Running
                },
                start: self.clock.wall(),
                end: (operations == 0).then(|| self.clock.wall()),
                pending: operations,
                total: operations,
                failures: Vec::new(),
                payload: (method.into(), uri.into()),
                result: None,
            },
        );
        id
    }

    /// A completer for one operation of task `id`.
    pub fn completer(self: &Arc<Self>, id: u64) -> Completer {
        let table: Weak<TaskTable> = Arc::downgrade(self);
        Completer::new(move |outcome| {
            if let Some(table) = table.upgrade() {
                table.finish_one(id, outcome.map_err(|e| e.to_string()));
            }
        })
    }

    /// Record that the pool refused one operation of task `id` synchronously.
    pub fn refuse_one(&self, id: u64, error: &PoolError) {
        self.finish_one(id, Err(error.to_string()));
    }

    /// Record the outcome of one operation of task `id` (the last one finishes the task).
    pub fn finish_one(&self, id: u64, outcome: Result<(), String>) {
        let now = self.clock.wall();
        let mut inner = self.inner.lock_or_recover();
        let Some(t) = inner.tasks.get_mut(&id) else {
            return;
        };
        if t.pending == 0 {
            return;
        }
        t.pending -= 1;
        if let Err(reason) = outcome {
            t.failures.push(reason);
        }
        if t.pending == 0 {
            t.state = if t.failures.is_empty() {
                TaskState::Completed
            } else {
                TaskState::Exception
            };
            t.end = Some(now);
        }
    }

    /// Record what task `id` produced (its `Oem.Pcietun`).
    pub fn set_result(&self, id: u64, result: Value) {
        if let Some(t) = self.inner.lock_or_recover().tasks.get_mut(&id) {
            t.result = Some(result);
        }
    }

    /// Forget a task whose operation the pool refused before it started.
    pub fn discard(&self, id: u64) {
        self.inner.lock_or_recover().tasks.remove(&id);
    }

    /// One task.
    pub fn get(&self, id: u64) -> Option<Task> {
        self.inner.lock_or_recover().tasks.get(&id).cloned()
    }

    /// Ids of every kept task, oldest first.
    pub fn ids(&self) -> Vec<u64> {
        self.inner.lock_or_recover().tasks.keys().copied().collect()
    }
}

/// RFC 3339 with seconds, UTC.
pub fn timestamp(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('Z', "+00:00")
}

/// The URI of task `id`.
pub fn task_uri(id: u64) -> String {
    format!("/redfish/v1/TaskService/Tasks/{id}")
}

/// The Task resource.
pub fn task_json(t: &Task) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    match t.state {
        TaskState::Completed => messages.push(Message::new("Success", &[]).to_json()),
        TaskState::Exception => {
            for reason in &t.failures {
                let mut m = Message::new("GeneralError", &[]);
                m.resolution = Some(reason.clone());
                messages.push(m.to_json());
            }
        }
        TaskState::Running => {}
    }
    let done = t.total - t.pending;
    let percent = (done * 100).checked_div(t.total).unwrap_or(100);
    let mut v = json!({
        "@odata.id": task_uri(t.id),
        "@odata.type": "#Task.v1_7_4.Task",
        "Id": t.id.to_string(),
        "Name": t.name,
        "TaskState": t.state.as_redfish(),
        "TaskStatus": if t.state == TaskState::Exception { "Critical" } else { "OK" },
        "StartTime": timestamp(t.start),
        "PercentComplete": percent,
        "Messages": messages,
        "Payload": {
            "HttpOperation": t.payload.0,
            "TargetUri": t.payload.1,
            "HttpHeaders": [],
        },
    });
    if let Some(end) = t.end {
        v["EndTime"] = json!(timestamp(end));
    }
    if let Some(r) = &t.result {
        v["Oem"] = json!({ "Pcietun": r });
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mgmt::clock::SystemClock;

    #[test]
    fn lifecycle() {
        let table = TaskTable::new(Arc::new(SystemClock));
        let id = table.create("two ops".into(), "PATCH", "/z", 2);
        let a = table.completer(id);
        let b = table.completer(id);
        assert_eq!(table.get(id).unwrap().state, TaskState::Running);
        a.finish(Ok(()));
        let t = table.get(id).unwrap();
        assert_eq!((t.state, t.pending), (TaskState::Running, 1));
        assert_eq!(task_json(&t)["PercentComplete"], 50);
        drop(b); // abandoned
        let t = table.get(id).unwrap();
        assert_eq!(t.state, TaskState::Exception);
        let j = task_json(&t);
        assert_eq!(j["TaskStatus"], "Critical");
        assert!(j["Messages"][0]["Resolution"]
            .as_str()
            .unwrap()
            .contains("abandoned"));
        assert!(j["EndTime"].is_string());
    }

    #[test]
    fn bounded() {
        let table = TaskTable::new(Arc::new(SystemClock));
        for i in 0..(MAX_TASKS + 10) {
            table.create(format!("t{i}"), "POST", "/x", 0);
        }
        assert_eq!(table.ids().len(), MAX_TASKS);
        assert_eq!(table.ids()[0], 11);
    }

    #[test]
    fn timestamps() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86400 + 3661);
        assert_eq!(timestamp(t), "1970-01-02T01:01:01+00:00");
    }
}
