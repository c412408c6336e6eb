//! A person actor: owns one person's distinct IDs and properties while it is resident.

use std::sync::Arc;

use actix::prelude::*;

use crate::domain::{apply_entry_to_person, Entry, Person};

/// One resident person.
pub struct PersonActor {
    person: Arc<Person>,
}

impl PersonActor {
    /// An actor holding `person`.
    pub fn new(person: Person) -> Self {
        PersonActor {
            person: Arc::new(person),
        }
    }
}

impl Actor for PersonActor {
    type Context = Context<Self>;
}

/// Read the person's current state (a cheap shared copy).
#[derive(Message)]
#[rtype(result = "Arc<Person>")]
pub struct Snapshot;

/// Fold a logged entry into the person (it has been appended to the log already).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Apply(pub Arc<Entry>);

/// Stop: the person was merged away, split, deleted or evicted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Snapshot> for PersonActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.person.clone())
    }
}

impl Handler<Apply> for PersonActor {
    type Result = ();

    fn handle(&mut self, msg: Apply, _: &mut Context<Self>) {
        apply_entry_to_person(Arc::make_mut(&mut self.person), &msg.0);
    }
}

impl Handler<Stop> for PersonActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Context<Self>) {
        ctx.stop();
    }
}
