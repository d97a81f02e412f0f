"""Binding stores: implementations of L{bulklq.interfaces.IBindingStore}."""
