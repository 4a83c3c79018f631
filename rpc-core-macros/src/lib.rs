//! The attributes behind `rpc_core::service` and `rpc_core::client`. Use
//! them through rpc-core (which re-exports them, and whose docs describe
//! them); the expansion names rpc-core's items by `::rpc_core::…`.
//!
//! * `model`: reads the attributes and signatures into entrypoints, with
//!   an error on the offending tokens for each misuse.
//! * `expand`: writes what a user would write by hand with rpc-core's
//!   `ServiceBuilder` (so wire behaviour cannot drift between the two), and
//!   a typed client.

mod expand;
mod model;

use proc_macro::TokenStream;

/// Defines a service from an `impl` block or a trait; see `rpc_core::service`.
#[proc_macro_attribute]
pub fn service(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match model::ServiceArgs::parse(attr.into(), "name") {
        Ok(args) => args,
        Err(e) => return with_item(e, item),
    };
    let expanded = if let Ok(item_impl) = syn::parse::<syn::ItemImpl>(item.clone()) {
        expand::service_impl(args, item_impl)
    } else if let Ok(item_trait) = syn::parse::<syn::ItemTrait>(item.clone()) {
        expand::service_trait(args, item_trait)
    } else {
        Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[rpc_core::service] goes on an `impl Type { … }` block or on a trait",
        ))
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(e) => with_item(e, item),
    }
}

/// Generates a typed client of a service written elsewhere from a trait
/// that describes it; see `rpc_core::client`.
#[proc_macro_attribute]
pub fn client(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = match model::ServiceArgs::parse(attr.into(), "service") {
        Ok(args) => args,
        Err(e) => return with_item(e, item),
    };
    let expanded = match syn::parse::<syn::ItemTrait>(item.clone()) {
        Ok(item_trait) => expand::client_trait(args, item_trait),
        Err(_) => Err(syn::Error::new(
            proc_macro2::Span::call_site(),
            "#[rpc_core::client] goes on a trait that lists the remote methods",
        )),
    };
    match expanded {
        Ok(tokens) => tokens.into(),
        Err(e) => with_item(e, item),
    }
}

/// The error, and nothing else: the item itself is left out, since its
/// attributes (`#[rpc]`, `#[default]`) mean nothing to the compiler alone
/// and would only add confusing errors.
fn with_item(error: syn::Error, _item: TokenStream) -> TokenStream {
    error.to_compile_error().into()
}
