"""Who the actor is: users, API tokens, passwords, console sessions, single sign-on, refusals."""
